"""Rerank benchmark: pairs/s through the gateway, against the same ONNX model in-process and a seed-style server.

    HF_HUB_OFFLINE=1 python bench/bench_rerank.py            # a few minutes on 2 cores
    HF_HUB_OFFLINE=1 python bench/bench_rerank.py --quick    # smoke run

In one run, on the same requests (a query and 32 documents of 3-150 words each) and the same cross-encoder
(the tiny one built here, or --model FOLDER for a real one):
- in-process: the exported pipeline (pair tokenizer -> ONNX classifier -> score step) with ONNX Runtime,
  every pair of every request sorted by length and run in batches of 32: the best the ONNX model does alone;
- gateway: concurrent `POST /v1/rerank` requests through the gateway (cache off) and the embedded Triton;
- reference: concurrent requests to an async FastAPI handler calling `CrossEncoder.predict`.
Rounds alternate the three; the medians and the ratios gateway/in-process (goal >= 0.8) and gateway/reference
(goal >= 3) are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_gateway import start  # noqa: E402

from triton_embeddings.local.launcher import TritonServer  # noqa: E402
from triton_embeddings.local.processes import free_port, stop_process, wait_http  # noqa: E402

MODEL = "bench-reranker"
WORDS = ("password reset login account email server batch token model query document river station city "
         "music history science market night water house school system group number world state").split()


def workload(requests: int, docs: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [(f"{i} {text(3, 8)}", [f"{j} {text(3, 150)}" for j in range(docs)]) for i in range(requests)]


def export(source: str) -> Path:
    from triton_embeddings.export.options import ExportOptions
    from triton_embeddings.export.rerank_exporter import export_reranker

    repo = Path(tempfile.mkdtemp(prefix="bench-rerank-repo-"))
    export_reranker(source, repo, ExportOptions(name=MODEL), log=lambda _: None)
    return repo


def in_process(repo: Path, load) -> float:
    """Pairs/s of the exported pipeline run in-process, all pairs sorted by length, batches of 32."""
    from triton_embeddings import contract as c
    from triton_embeddings.export.rerank_pipeline import RerankPipeline
    from triton_embeddings.export.triton_config import load as load_config
    from triton_embeddings.triton_models.pair_tokenize import PairTokenizer

    tok_dir, enc_dir, score_dir = (repo / n / "1" for n in c.rerank_step_names(MODEL))
    tokenizer = PairTokenizer.from_config(load_config(tok_dir.parent / "config.pbtxt"), tok_dir)
    pipe = RerankPipeline(tokenizer, str(enc_dir / "model.onnx"), str(score_dir / "model.onnx"))
    pairs = [(q, d) for q, docs in load for d in docs]
    pipe.predict(pairs[:64])  # warm-up
    t0 = time.perf_counter()
    pipe.predict(pairs, batch_size=32)
    return len(pairs) / (time.perf_counter() - t0)


async def over_http(url: str, load, concurrency: int) -> tuple[float, int]:
    """Pairs/s of `POST url` with `concurrency` clients; returns (pairs/s, failed requests)."""
    queue = list(reversed(load))
    failed = 0

    async def worker(client: httpx.AsyncClient):
        nonlocal failed
        while queue:
            query, docs = queue.pop()
            r = await client.post(url, json={"model": MODEL, "query": query, "documents": docs})
            failed += r.status_code != 200 or len(r.json()["results"]) != len(docs)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return sum(len(d) for _, d in load) / elapsed, failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="CrossEncoder folder or hub id (default: the tiny one built here)")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--docs", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: 8 requests, 1 round")
    args = p.parse_args()
    if args.quick:
        args.requests, args.rounds = 8, 1
    source = args.model
    if source is None:
        from tests.tiny_models import build_cross_encoder

        source = str(build_cross_encoder(Path(tempfile.mkdtemp(prefix="bench-ce-")) / "tiny-cross-encoder"))
    repo = export(source)
    load = workload(args.requests, args.docs)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with TritonServer.on_free_ports(repo, log_file=repo / "triton.log") as triton:
        gw_port, ref_port = free_port(), free_port()
        procs = [
            start([sys.executable, "-m", "triton_embeddings.gateway"], dict(
                env, EMBEDDINGS_PORT=str(gw_port), EMBEDDINGS_TRITON_GRPC_URL=triton.grpc_url, EMBEDDINGS_CACHE="none",
                EMBEDDINGS_TRITON_METRICS_URL="", EMBEDDINGS_ACCESS_LOG="false")),
            start([sys.executable, "-m", "uvicorn", "bench.reference_rerank_server:app", "--port", str(ref_port),
                   "--log-level", "warning"], dict(env, REFERENCE_RERANKER=source)),
        ]
        try:
            wait_http(f"http://127.0.0.1:{gw_port}/ready", timeout=120, proc=procs[0])
            wait_http(f"http://127.0.0.1:{ref_port}/docs", timeout=120, proc=procs[1])
            results = run_rounds(args, repo, load, gw_port, ref_port)
        finally:
            for proc in procs:
                stop_process(proc)
    report(args, results)


def run_rounds(args, repo: Path, load, gw_port: int, ref_port: int) -> dict[str, list[float]]:
    gw_url, ref_url = f"http://127.0.0.1:{gw_port}/v1/rerank", f"http://127.0.0.1:{ref_port}/v1/rerank"
    warm = workload(4, args.docs, seed=99)
    asyncio.run(over_http(gw_url, warm, 4))
    asyncio.run(over_http(ref_url, warm, 4))
    results: dict[str, list[float]] = {"in-process": [], "gateway": [], "reference": [], "failed": []}
    for _ in range(args.rounds):
        results["in-process"].append(in_process(repo, load))
        gw, gw_failed = asyncio.run(over_http(gw_url, load, args.concurrency))
        ref, ref_failed = asyncio.run(over_http(ref_url, load, args.concurrency))
        results["gateway"].append(gw)
        results["reference"].append(ref)
        results["failed"].append(gw_failed + ref_failed)
    return results


def report(args, results: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in results.items() if k != "failed"}
    pairs = args.requests * args.docs
    print(f"rerank: {args.requests} requests x {args.docs} documents ({pairs} pairs), concurrency "
          f"{args.concurrency}, {args.rounds} round(s), medians; failed requests: {int(sum(results['failed']))}")
    for name in ("in-process", "gateway", "reference"):
        print(f"  {name:<11} {med[name]:9.0f} pairs/s   rounds: {', '.join(f'{x:.0f}' for x in results[name])}")
    print(f"  gateway / in-process ONNX (sorted, batched): {med['gateway'] / med['in-process']:.2f}x (goal >= 0.8)")
    print(f"  gateway / FastAPI + CrossEncoder.predict   : {med['gateway'] / med['reference']:.2f}x (goal >= 3)")


if __name__ == "__main__":
    main()
