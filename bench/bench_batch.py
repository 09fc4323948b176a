"""The Batch API beside online traffic, side by side in one run (issue 22):

    HF_HUB_OFFLINE=1 python bench/bench_batch.py [--quick] [--repository DIR] [--json FILE]

One Triton and one gateway (cache off, SQLite batch store in a temp dir). In alternating rounds:
  online alone   wrk, S32 (32 clients x 1 short text, bench/embeddings.lua), p50 and texts/s
  online + batch the same wrk run while a batch of `--batch-texts` texts runs; p50, and the batch's texts/s
                 meanwhile (lines written during the window); the batch is cancelled after it
Then, on the same corpus: the batch alone (create to completed, texts/s) and `embeddings-reembed` alone
(the client-side tool, same texts per request) on it. The claim checked: online p50 under S32 rises at
most 20% while a batch runs. --quick: one short round, a small corpus (proves the bench works).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import procstat  # noqa: E402
from provenance import provenance  # noqa: E402

from bench import LOADS, MODEL, ensure_repository, make_texts, start_stack, stop_stack, wrk  # noqa: E402

S32 = next(load for load in LOADS if load.name == "S32")
MAX_RISE = 0.20  # the bound on online p50 under S32 while a batch runs


def batch_file(texts: list[str], per_line: int) -> bytes:
    lines = [{"custom_id": f"b{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": MODEL, "input": texts[i : i + per_line]}} for i in range(0, len(texts), per_line)]
    return "\n".join(json.dumps(line) for line in lines).encode()


def submit(client: httpx.Client, texts: list[str], per_line: int) -> str:
    file = client.post("/v1/files", files={"file": ("corpus.jsonl", batch_file(texts, per_line))},
                       data={"purpose": "batch"}).raise_for_status().json()
    batch = client.post("/v1/batches", json={"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"}).raise_for_status().json()
    return batch["id"]


def lines_done(client: httpx.Client, batch_id: str) -> tuple[str, int]:
    b = client.get(f"/v1/batches/{batch_id}").raise_for_status().json()
    return b["status"], b["request_counts"]["completed"] + b["request_counts"]["failed"]


ENDED = ("completed", "failed", "expired", "cancelled")


def wait_status(client: httpx.Client, batch_id: str, statuses: tuple[str, ...], timeout: float | None = 60) -> str:
    """Poll until the batch's status is one of `statuses`; that status."""
    deadline = time.monotonic() + (timeout or float("inf"))
    while (status := lines_done(client, batch_id)[0]) not in statuses:
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} still {status} after {timeout} s")
        time.sleep(0.05)
    return status


def batch_alone(client: httpx.Client, texts: list[str], per_line: int) -> dict:
    t0 = time.perf_counter()
    batch_id = submit(client, texts, per_line)
    status = wait_status(client, batch_id, ENDED, timeout=None)
    wall = time.perf_counter() - t0
    b = client.get(f"/v1/batches/{batch_id}").json()
    return {"status": status, "texts": len(texts), "seconds": round(wall, 3),
            "texts_per_s": round(len(texts) / wall, 1), "failed_lines": b["request_counts"]["failed"]}


def reembed_alone(url: str, texts: list[str], per_line: int, work: Path) -> dict:
    corpus, out = work / "corpus.jsonl", work / "reembed.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    cmd = [sys.executable, "-m", "triton_embeddings.compare.reembed", "--input", str(corpus), "--output", str(out),
           "--url", url + "/v1", "--model", MODEL, "--batch-size", str(per_line), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, OPENAI_API_KEY="unused"))
    wall = time.perf_counter() - t0
    written = sum(1 for _ in out.open())
    return {"texts": written, "seconds": round(wall, 3), "texts_per_s": round(written / wall, 1),
            "command": f"embeddings-reembed --batch-size {per_line} (default concurrency)"}


WARM_S = 3.0  # S32 before each measured run: the gateway counts online traffic as on, the batch is throttled


def warm(stack, files, prefix: str) -> None:
    wrk(stack.gateway_url, "openai", MODEL, S32, WARM_S, prefix, files, {}, None)


def online_round(r: int, stack, client: httpx.Client, texts: list[str], args, files) -> dict:
    """wrk S32 alone, then the same with a batch running (started first, cancelled after). Each measured run
    follows WARM_S of the same load, so it sees the steady state the goal is about: texts already in a call to
    Triton are not preempted, and when the load starts the batch's calls in flight finish first."""
    warm(stack, files, f"wa{r}")
    alone = wrk(stack.gateway_url, "openai", MODEL, S32, args.seconds, f"a{r}", files, stack.pids(), None)
    batch_id = submit(client, [f"r{r} {t}" for t in texts], args.per_line)
    wait_status(client, batch_id, ("in_progress", *ENDED))
    warm(stack, files, f"wb{r}")
    _, before = lines_done(client, batch_id)
    t0 = time.perf_counter()
    # No process groups: wrk would wait for the server to go idle after its run, which it does not while the
    # batch runs (the window, and the batch's rate, would then stretch over a wait without online load).
    loaded = wrk(stack.gateway_url, "openai", MODEL, S32, args.seconds, f"b{r}", files, {}, None)
    status, after = lines_done(client, batch_id)
    wall = time.perf_counter() - t0
    if status != "in_progress":
        print(f"round {r}: the batch ended ({status}) inside the window; use more --batch-texts", file=sys.stderr)
    client.post(f"/v1/batches/{batch_id}/cancel")
    wait_status(client, batch_id, ENDED)
    procstat.wait_idle(stack.pids())  # the next run starts on an idle server
    return {"alone": {"p50_ms": alone.p50_ms, "p99_ms": alone.p99_ms, "texts_per_s": alone.texts_per_s,
                      "errors": alone.errors},
            "with_batch": {"p50_ms": loaded.p50_ms, "p99_ms": loaded.p99_ms, "texts_per_s": loaded.texts_per_s,
                           "errors": loaded.errors, "batch_status_at_end": status,
                           "batch_texts_per_s": round((after - before) * args.per_line / wall, 1)}}


def summarize(rounds: list[dict], alone: dict, reembed: dict) -> dict:
    p50_alone = statistics.median(r["alone"]["p50_ms"] for r in rounds)
    p50_batch = statistics.median(r["with_batch"]["p50_ms"] for r in rounds)
    rise = p50_batch / p50_alone - 1
    return {"s32_p50_ms_alone": round(p50_alone, 2), "s32_p50_ms_with_batch": round(p50_batch, 2),
            "s32_p50_rise": round(rise, 3), "s32_p50_rise_within_20pct": rise <= MAX_RISE,
            "batch_texts_per_s_under_s32": statistics.median(r["with_batch"]["batch_texts_per_s"] for r in rounds),
            "batch_texts_per_s_alone": alone["texts_per_s"], "reembed_texts_per_s": reembed["texts_per_s"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short round on a small corpus: proves the bench works")
    p.add_argument("--repository", type=Path, help=f"repository holding {MODEL} (default: export to a temp dir)")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3; --quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per wrk run (default 20; --quick 2)")
    p.add_argument("--batch-texts", type=int, help="texts in each batch (default 20000; --quick 512)")
    p.add_argument("--per-line", type=int, default=32, help="texts per batch line and per reembed request")
    p.add_argument("--json", type=Path, help="write the figures and their provenance here")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 20.0)
    args.batch_texts = args.batch_texts or (512 if args.quick else 20_000)
    return args


def corpus(n: int) -> list[str]:
    short, long = make_texts()
    return [f"c{i} {(long if i % 5 == 4 else short)[i % len(short if i % 5 != 4 else long)]}" for i in range(n)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench_batch: wrk is not installed (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    prov = provenance("bench/bench_batch.py", argv)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        files = (work / "short.txt", work / "long.txt")
        short, long = make_texts()
        files[0].write_text("\n".join(short) + "\n")
        files[1].write_text("\n".join(long) + "\n")
        texts = corpus(args.batch_texts)
        repo = ensure_repository(args.repository, work, MODEL, "fp32")
        os.environ.update(EMBEDDINGS_BATCH_STORE=f"sqlite:///{work}/batch.sqlite3", EMBEDDINGS_BATCH_POLL_S="0.2")
        stack = start_stack([repo], work, MODEL, reference=False)
        try:
            with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
                rounds = [online_round(r, stack, client, texts, args, files) for r in range(args.rounds)]
                alone = batch_alone(client, [f"alone {t}" for t in texts], args.per_line)
            reembed = reembed_alone(stack.gateway_url, [f"reembed {t}" for t in texts], args.per_line, work)
        finally:
            stop_stack(stack)
    summary = summarize(rounds, alone, reembed)
    print(json.dumps(summary, indent=1))
    if args.json:
        doc = {"provenance": prov, "plan": {"rounds": args.rounds, "seconds": args.seconds,
                                            "batch_texts": args.batch_texts, "per_line": args.per_line,
                                            "load": S32.label, "model": MODEL, "quick": args.quick},
               "rounds": rounds, "batch_alone": alone, "reembed_alone": reembed, "summary": summary}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    errors = sum(r[k]["errors"] for r in rounds for k in ("alone", "with_batch"))
    return 1 if errors or alone["status"] != "completed" else 0


if __name__ == "__main__":
    raise SystemExit(main())
