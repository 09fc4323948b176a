"""`make chaos`: the compose-shaped stack under a steady mixed load while its parts are killed in turn.

    make chaos                      # 10 minutes; `make chaos MINUTES=2 CHAOS_ARGS="--out run.json"`
    HF_HUB_OFFLINE=1 python bench/chaos.py --minutes 2 --interval 15 --no-mpnet

The stack: nginx (the shipped config) in front of `embeddings-serve --gateways 2` (2 worker processes each,
the Redis cache, one SQLite batch store), which supervises the embedded Triton serving all-MiniLM-L6-v2,
all-mpnet-base-v2 and a tiny random cross-encoder. The load: 3 threads of the official openai client (its
default retries) sending embeddings (float, base64, token ids, `dimensions`) and rerank calls, and one batch
job at a time. Every answer is checked against a reference computed in-process before the run (cosine >=
0.9999, score within 1e-4). Every --interval seconds, in turn: SIGKILL a Python-backend stub, SIGKILL
tritonserver, SIGTERM a gateway, SIGKILL a gateway, SIGKILL Redis, 200 idle connections, a 10x burst (bench/
chaos_faults.py); each fault waits until the stack has answered for a few seconds since the last recovery,
and the run goes on until the whole cycle ran at least once. Then a batch job whose gateway is SIGKILLed
mid-job, and a graceful stop (SIGTERM to embeddings-serve) while requests are in flight on both gateways.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import chaos_report  # noqa: E402
import chaos_stack as cs  # noqa: E402
import procstat  # noqa: E402
from chaos_faults import ORDER, Faults, kill_tree, stubs  # noqa: E402
from chaos_load import Record, batch_input, batch_loop, check_batch, client_for, clients, references, submit, wait_batch  # noqa: E402
from provenance import provenance  # noqa: E402

from tests.tools import find  # noqa: E402
from triton_embeddings.local.models import MINILM, MPNET, model_source  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run under faults (at least one cycle)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between faults")
    p.add_argument("--clients", type=int, default=3, help="load threads (the burst runs 10x as many)")
    p.add_argument("--rate", type=float, default=5.0, help="calls per second each load thread starts at most")
    p.add_argument("--warmup-seconds", type=float, default=20.0)
    p.add_argument("--no-mpnet", action="store_true", help="serve all-MiniLM-L6-v2 and the reranker only")
    p.add_argument("--seed", type=int, default=0, help="picks the stub and the gateway each fault hits")
    p.add_argument("--out", type=Path, help="also write the run's figures and provenance here (JSON)")
    p.add_argument("--workdir", type=Path, help="keep the logs (serve.log, nginx/) and the batch store here")
    return p.parse_args(argv)


def tool(name: str) -> str:
    path = find(name)
    if path is None:
        raise SystemExit(f"chaos: {name} is not installed (apt-get install {name})")
    return path


def rss(serve: cs.Serve, nginx: cs.Nginx, redis: cs.Redis) -> dict[str, float]:
    """RSS in MB of every process of the stack, named by its part."""
    out = {"embeddings-serve": procstat.rss_mb(serve.proc.pid)}
    if (triton := serve.triton_pid()) is not None:
        out["tritonserver"] = procstat.rss_mb(triton)
        models = sorted(stubs(triton).items(), key=lambda s: (s[1], s[0]))
        for pid, model in models:
            k = sum(m == model for p, m in models if p < pid)
            out[f"stub {model} {k}"] = procstat.rss_mb(pid)
    for i, pid in enumerate(serve.gateway_pids()):
        if pid is not None:
            out[f"gateway {i}"] = procstat.rss_mb(pid)
            for k, child in enumerate(sorted(procstat.children(pid))):
                out[f"gateway {i} worker {k}"] = procstat.rss_mb(child)
    out["nginx"] = sum(procstat.rss_mb(p) for p in nginx.pids())
    out["redis-server"] = procstat.rss_mb(redis.proc.pid)
    return out


def metric(serve: cs.Serve, i: int, name: str) -> float:
    """The sum of a gateway's samples of `name` (0 when it does not answer)."""
    try:
        with urllib.request.urlopen(serve.gateway_url(i) + "/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def batch_sigkill(serve: cs.Serve, nginx: cs.Nginx, refs, lines: int = 60) -> dict:
    """A batch job whose gateway is SIGKILLed once it has written a line; every line exactly once after."""
    client = client_for(nginx.url)
    data, wanted = batch_input(refs, random.Random(11), lines, "killed")
    before = [metric(serve, i, "gateway_batch_lines_total") for i in range(len(serve.ports))]
    batch = submit(client, data, "killed")
    running = []
    cs.wait_for(lambda: bool(running.extend(i for i, b in enumerate(before)
                                            if metric(serve, i, "gateway_batch_lines_total") > b) or running),
                300, "the batch job to start")
    i = running[0]
    written = metric(serve, i, "gateway_batch_lines_total") - before[i]
    kill_tree(serve.gateway_pid(i), signal.SIGKILL)
    done = wait_batch(client, batch.id)
    check = check_batch(client, done, wanted, refs)
    return {"lines": lines, "killed_gateway": i, "lines_written_before_kill": int(written), "status": check.status,
            "answered": check.answered, "duplicated": check.duplicated, "missing": check.missing,
            "wrong": check.wrong, "ok": check.ok}


def _send(port: int, body: bytes, sent: threading.Event, results: list, check) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
        sent.set()  # the whole body is written: the stack has it
        resp = conn.getresponse()
        results.append(check(resp.status, resp.read()))
    except OSError as e:
        results.append(f"{type(e).__name__}: {e}")
    finally:
        sent.set()
        conn.close()


def graceful_stop(serve: cs.Serve, nginx: cs.Nginx, refs, n: int = 8) -> dict:
    """SIGTERM to embeddings-serve while `n` requests are in flight through nginx on both gateways."""
    model = next(iter(refs.reserved))
    texts = refs.reserved[model]
    size = len(texts) // n

    def checker(chunk: list[str]):
        def check(status: int, data: bytes):
            if status != 200:
                return f"status {status}: {data[:200]!r}"
            return refs.all_ok(model, json.loads(data)["data"], chunk) or "wrong vectors"
        return check

    results, sent, threads = [], [threading.Event() for _ in range(n)], []
    for k in range(n):
        chunk = texts[k * size:(k + 1) * size]
        body = json.dumps({"model": model, "input": chunk}).encode()
        threads.append(threading.Thread(target=_send, args=(nginx.port, body, sent[k], results, checker(chunk))))
        threads[-1].start()
    for e in sent:
        e.wait(60)
    in_flight = [0.0] * len(serve.ports)
    with contextlib.suppress(TimeoutError):
        cs.wait_for(lambda: all(in_flight.__setitem__(i, metric(serve, i, "gateway_in_flight_requests")) or
                                in_flight[i] > 0 for i in range(len(serve.ports))), 5, "requests on both gateways")
    serve.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(300)
    code = serve.proc.wait(180)
    answered = sum(r is True for r in results)
    return {"requests": n, "in_flight_per_gateway": [int(x) for x in in_flight], "answered": answered,
            "lost": n - answered, "errors": [r for r in results if r is not True][:5], "serve_exit": code}


def cycle(faults: Faults, args, start: float) -> None:
    """A fault every --interval s, in ORDER, until --minutes have passed and every fault ran once."""
    k = 0
    while True:
        time.sleep(max(0.0, start + (k + 1) * args.interval - time.monotonic()))
        if time.monotonic() - start >= args.minutes * 60 and k >= len(ORDER):
            return
        faults.settle()
        fault = faults.inject(ORDER[k % len(ORDER)])
        calls = list(faults.record.calls)
        print(f"chaos: {fault.name} ({fault.target}) at {fault.at - start:.0f} s: answering again after "
              f"{fault.recovery_s:.1f} s; so far {len(calls)} calls, {sum(c.failed for c in calls)} failed, "
              f"{sum(c.wrong for c in calls)} wrong", flush=True)
        k += 1


def run(args, work: Path) -> dict:
    models = [MINILM] if args.no_mpnet else [MINILM, MPNET]
    repo = cs.repository(models, work)
    ce = cs.cross_encoder_folder() / "model"
    print("chaos: computing references ...", flush=True)
    refs = references({m: model_source(m) for m in models}, (cs.RERANKER, str(ce)),
                      {MINILM: 3000, MPNET: 800}, cs.CACHE)
    with cs.Redis(tool("redis-server"), work) as redis:
        serve = cs.start_serve(repo, models, redis.port, work)
        try:
            return _under_load(args, serve, redis, refs, work)
        finally:
            if serve.proc.poll() is None:
                kill_tree(serve.proc.pid, signal.SIGKILL)
                serve.proc.wait()


def _under_load(args, serve: cs.Serve, redis: cs.Redis, refs, work: Path) -> dict:
    cs.wait_for(lambda: all(serve.gateway_ready(i) for i in range(len(serve.ports))) or serve.proc.poll(), 600,
                "embeddings-serve")
    if serve.proc.poll() is not None:
        raise SystemExit(f"chaos: embeddings-serve exited with {serve.proc.returncode}; log: {serve.log}")
    nginx = cs.start_nginx(tool("nginx"), serve.ports, work)
    try:
        record, stop, batch_stop, batches = Record(), threading.Event(), threading.Event(), []
        faults = Faults(serve, nginx, redis, refs, record, args, random.Random(args.seed))
        cs.wait_for(faults.stack_ready, 60, "the stack through nginx")
        threads = clients(nginx.url, refs, record, args.clients, stop, rate=args.rate)
        batch_thread = batch_loop(nginx.url, refs, record, batch_stop, batches)
        time.sleep(args.warmup_seconds)
        warm, start = rss(serve, nginx, redis), time.monotonic()
        print(f"chaos: warm-up done ({args.warmup_seconds:g} s); faults every {args.interval:g} s for "
              f"{args.minutes:g} min ...", flush=True)
        cycle(faults, args, start)
        faults.settle()
        batch_stop.set()  # the killed job runs alone: the gateway whose counter moves is the one running it
        batch_thread.join(600)
        killed = batch_sigkill(serve, nginx, refs)
        faults.settle()
        stop.set()
        for t in threads:
            t.join(300)
        end, minutes = rss(serve, nginx, redis), (time.monotonic() - start) / 60
        graceful = graceful_stop(serve, nginx, refs)
    finally:
        nginx.proc.send_signal(signal.SIGQUIT)
        nginx.proc.wait(20)
    return chaos_report.summary(args, record, faults.done, batches, warm, end, graceful, killed, start, minutes)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.provenance = provenance("bench/chaos.py", argv)
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        work.mkdir(parents=True, exist_ok=True)
        doc = run(args, work)
    print("\n".join(chaos_report.lines(doc)), flush=True)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if chaos_report.goals_met(doc) else 1


if __name__ == "__main__":
    sys.exit(main())
