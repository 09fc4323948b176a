"""Plain OpenAI requests, this checkout against a baseline git ref, side by side in one run.

    HF_HUB_OFFLINE=1 python bench/bench_plain_requests.py --baseline main      # ~5 minutes on 2 cores

Each side exports all-MiniLM-L6-v2 with its own code, runs its own Triton and gateway (cache off), and
gets the same plain requests (no extension fields): 32 concurrent single-text clients, then 4 concurrent
batch-32 clients. Rounds alternate baseline / this checkout so drift on a shared machine hits both; the
medians and their ratio (this / baseline) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_gateway import Http, run_load, short_texts, start  # noqa: E402

from triton_embeddings.defaults import DEFAULT_MODEL as MODEL  # noqa: E402
from triton_embeddings.defaults import default_source  # noqa: E402
from triton_embeddings.local.processes import free_port, stop_process, wait_http  # noqa: E402


def checkout(ref: str, into: Path) -> Path:
    """The tree of `ref` (git archive), without touching the working tree or the worktree list."""
    data = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(data)).extractall(into, filter="data")
    return into


class Side:
    """One code tree: its export, its Triton, its gateway."""

    def __init__(self, name: str, root: Path, work: Path, source: str):
        self.name, self.root, self.repo = name, root, work / f"repo-{name}"
        self.env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1")
        self.source = source
        self.procs: list[subprocess.Popen] = []

    def up(self) -> Http:
        subprocess.run(
            [sys.executable, "-m", "triton_embeddings.export", self.source, "--name", MODEL,
             "--repository", str(self.repo)],
            cwd=self.root, env=self.env, check=True, capture_output=True,
        )
        http, grpc, metrics, gw = free_port(), free_port(), free_port(), free_port()
        self.procs.append(start(
            [sys.executable, "-m", "triton_embeddings.local.launcher", "--model-repository", str(self.repo),
             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
            dict(self.env, PWD=str(self.root)),
        ))
        wait_http(f"http://127.0.0.1:{http}/v2/health/ready", timeout=300)
        self.procs.append(start([sys.executable, "-m", "triton_embeddings.gateway"], dict(
            self.env, EMBEDDINGS_TRITON_GRPC_URL=f"127.0.0.1:{grpc}", EMBEDDINGS_TRITON_METRICS_URL="",
            EMBEDDINGS_PORT=str(gw), EMBEDDINGS_CACHE="none", EMBEDDINGS_ACCESS_LOG="false",
            EMBEDDINGS_LOG_LEVEL="warning",
        )))
        wait_http(f"http://127.0.0.1:{gw}/ready")
        return Http(f"http://127.0.0.1:{gw}/v1/embeddings")

    def down(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)


async def measure(sides: dict[str, Http], rounds: int, requests: int, batches: int) -> dict:
    results: dict[tuple[str, str], list[float]] = {}
    for gw in sides.values():  # warm both
        await run_load(gw.send, short_texts(64, 9), 32)
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            single = [f"{name} r{r} {t}" for t in short_texts(requests, 1)]
            res = await run_load(sides[name].send, single, 32)
            results.setdefault((name, "single"), []).append(res["tps"])
            batch = [[f"{name} r{r} {t}" for t in short_texts(32, 100 + i)] for i in range(batches)]
            res = await run_load(sides[name].send, batch, 4)
            results.setdefault((name, "batch"), []).append(res["tps"])
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="main", help="git ref to compare with (default %(default)s)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=512, help="single-text requests per round and side")
    p.add_argument("--batch-requests", type=int, default=32, help="batch-32 requests per round and side")
    args = p.parse_args()
    source = default_source()
    with tempfile.TemporaryDirectory(prefix="bench-plain-") as tmp:
        work = Path(tmp)
        sides = {"baseline": Side("baseline", checkout(args.baseline, work / "baseline"), work, source),
                 "this": Side("this", ROOT, work, source)}
        try:
            clients = {name: side.up() for name, side in sides.items()}
            results = asyncio.run(measure(clients, args.rounds, args.requests, args.batch_requests))
        finally:
            for side in sides.values():
                side.down()
    print(f"\nplain requests, texts/s (median of {args.rounds} alternating rounds; baseline = {args.baseline})")
    print(f"{'load':<28} {'baseline':>10} {'this':>10} {'this/baseline':>14}")
    for load, label in (("single", "32 clients x 1 text"), ("batch", "4 clients x 32 texts")):
        base = statistics.median(results[("baseline", load)])
        this = statistics.median(results[("this", load)])
        print(f"{label:<28} {base:10.0f} {this:10.0f} {this / base:14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
