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
import json
import os
import random
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

from triton_embeddings import contract  # noqa: E402
from triton_embeddings.defaults import DEFAULT_HUB_ID, DEFAULT_MODEL, default_source  # noqa: E402
from triton_embeddings.local.launcher import TritonServer  # noqa: E402
from triton_embeddings.local.processes import free_port, stop_process, wait_http  # noqa: E402

MODEL = DEFAULT_MODEL
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
        inp = grpcclient.InferInput(contract.TEXT, [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_).reshape(-1, 1))
        out = [grpcclient.InferRequestedOutput(n) for n in (contract.EMBEDDING, contract.TOKEN_COUNT)]
        res = await self.client.infer(MODEL, [inp], outputs=out)
        return res.as_numpy(contract.EMBEDDING).shape[0] == len(texts)


class Http:
    """A lean keep-alive HTTP/1.1 load generator (like wrk, not like a Python SDK): on a shared 2-core
    machine a heavy client would steal the CPU the servers are measured on. It decodes base64 as the
    official clients do."""

    def __init__(self, url: str, encoding_format: str = "base64"):
        u = httpx.URL(url)
        self.host, self.port, self.path = u.host, u.port, u.raw_path.decode()
        self.fmt = encoding_format
        self.pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self, payload) -> bool:
        body = json.dumps({"model": MODEL, "input": payload, "encoding_format": self.fmt}).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):  # a pooled connection the server closed while idle is retried once, fresh
            reused = bool(self.pool) and attempt == 1
            reader, writer = self.pool.pop() if reused else await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(head + body)
                status_line = await reader.readline()
                if not status_line and reused and attempt == 1:
                    writer.close()
                    continue
                status = int(status_line.split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                data = json.loads(await reader.readexactly(length))
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                writer.close()
                if reused and attempt == 1:
                    continue
                return False
            self.pool.append((reader, writer))
            if status != 200:
                return False
            for d in data["data"]:
                e = d["embedding"]
                if isinstance(e, str):
                    np.frombuffer(base64.b64decode(e), dtype="<f4")
            return True
        return False


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def repository(arg: Path | None, source: str) -> Path:
    if arg is not None:
        return arg
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions

    repo = Path(tempfile.mkdtemp(prefix="bench-gw-repo-"))
    export_model(source, repo, ExportOptions(name=MODEL, source_label=DEFAULT_HUB_ID), log=lambda _: None)
    return repo


async def interleaved_latency(direct: Direct, gw: Http, texts: list[str], block: int = 10) -> tuple[float, float]:
    """p50 of one-at-a-time requests, direct and gateway taking turns in small blocks (drift hits both)."""
    lat: dict[str, list[float]] = {"direct": [], "gateway": []}
    for i in range(0, len(texts), block):
        for name, send in (("direct", direct.send), ("gateway", gw.send)):
            for t in texts[i : i + block]:
                t0 = time.perf_counter()
                await send(f"{name} {t}")
                lat[name].append(time.perf_counter() - t0)
    return statistics.median(lat["direct"]), statistics.median(lat["gateway"])


async def measure(args, direct: Direct, gw: Http, ref: Http | None) -> list[dict]:
    """One dict per round; each load runs direct then gateway back to back (the machine is shared)."""
    single = short_texts(args.requests, 1)
    batches = [short_texts(32, 100 + i) for i in range(args.batch_requests)]
    await run_load(direct.send, short_texts(64, 9), 32)  # warm both paths
    await run_load(gw.send, short_texts(64, 10), 32)
    rounds = []
    for r in range(args.rounds):
        res: dict = {}
        for name, send in (("direct", direct.send), ("gateway", gw.send)):
            res[(name, "single")] = await run_load(send, [f"r{r} {t}" for t in single], 32)
        for name, send in (("direct", direct.send), ("gateway", gw.send)):
            res[(name, "batch")] = await run_load(send, [[f"r{r} {t}" for t in b] for b in batches], 4)
        res["p50_direct"], res["p50_gateway"] = await interleaved_latency(
            direct, gw, [f"r{r} {t}" for t in short_texts(args.latency_requests, 2)]
        )
        if ref is not None:
            texts = [f"r{r} {t}" for t in short_texts(args.reference_requests, 3)]
            res[("reference", "single")] = await run_load(ref.send, texts, 32)
            res[("gateway-vs-ref", "single")] = await run_load(gw.send, [f"g {t}" for t in texts], 32)
        rounds.append(res)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="exported model repository (default: export to a temp dir)")
    parser.add_argument("--requests", type=int, default=1024, help="single-text requests per round")
    parser.add_argument("--batch-requests", type=int, default=64, help="batch-32 requests per round")
    parser.add_argument("--latency-requests", type=int, default=100, help="one-at-a-time requests per round")
    parser.add_argument("--reference-requests", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="skip the seed-design reference server")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = default_source()
    repo = repository(args.repository, source)
    triton = TritonServer.on_free_ports(repo)
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
        procs.append(start([sys.executable, "-m", "triton_embeddings.gateway"], env))
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
            wait_http(f"http://127.0.0.1:{gw_port}/ready", 120, procs[0])
            if not args.no_reference:
                wait_http(f"http://127.0.0.1:{ref_port}/docs", 120, procs[1])

            async def clients_and_measure():  # the clients must live on the loop that runs them
                ref = None if args.no_reference else Http(f"http://127.0.0.1:{ref_port}/v1/embeddings")
                direct = Direct(triton.grpc_url)
                gw = Http(f"http://127.0.0.1:{gw_port}/v1/embeddings")
                return await measure(args, direct, gw, ref)

            res = asyncio.run(clients_and_measure())
        finally:
            for p in procs:
                stop_process(p, 15)
    report(res, args)
    return 0


def report(rounds: list[dict], args) -> None:
    med = statistics.median

    def col(name: str, key: str, field: str) -> float:
        return med(r[(name, key)][field] for r in rounds)

    loads = {"single": "32 clients x 1 text", "batch": "4 clients x 32 texts"}
    print(f"\nmedians of {len(rounds)} rounds (texts/s; p50 of request latency)")
    print(f"{'path':<16}{'load':<26}{'texts/s':>10}{'p50 ms':>10}{'errors':>8}")
    names = ["direct", "gateway"] + (["reference", "gateway-vs-ref"] if ("reference", "single") in rounds[0] else [])
    for name in names:
        for key, label in loads.items():
            if (name, key) in rounds[0]:
                errors = sum(r[(name, key)]["errors"] for r in rounds)
                print(
                    f"{name:<16}{label:<26}{col(name, key, 'tps'):>10.1f}{col(name, key, 'p50') * 1000:>10.2f}"
                    f"{errors:>8}"
                )
    p50d, p50g = med(r["p50_direct"] for r in rounds), med(r["p50_gateway"] for r in rounds)
    print(f"{'direct':<16}{'1 client x 1 short text':<26}{'':>10}{p50d * 1000:>10.2f}")
    print(f"{'gateway':<16}{'1 client x 1 short text':<26}{'':>10}{p50g * 1000:>10.2f}")

    def ratio(a: str, b: str, key: str = "single") -> str:
        rs = sorted(r[(a, key)]["tps"] / r[(b, key)]["tps"] for r in rounds)
        return f"{med(rs):.2f} (rounds {', '.join(f'{x:.2f}' for x in rs)})"

    print(f"\ngateway/direct throughput, 32 single-text clients:   {ratio('gateway', 'direct')}  target >= 0.90")
    print(f"gateway/direct throughput, batch-32 requests:        {ratio('gateway', 'direct', 'batch')}  target >= 0.90")
    added = sorted((r["p50_gateway"] - r["p50_direct"]) * 1000 for r in rounds)
    print(
        f"added p50 latency, one short text:                   {med(added):.2f} ms "
        f"(rounds {', '.join(f'{x:.2f}' for x in added)})  target <= 2 ms"
    )
    if ("reference", "single") in rounds[0]:
        errs = (
            sum(r[("gateway-vs-ref", "single")]["errors"] for r in rounds),
            sum(r[("reference", "single")]["errors"] for r in rounds),
        )
        print(
            f"gateway/reference throughput, 32 single-text clients: {ratio('gateway-vs-ref', 'reference')}  "
            f"target >= 3; errors: gateway {errs[0]}, reference {errs[1]}"
        )


if __name__ == "__main__":
    sys.exit(main())
