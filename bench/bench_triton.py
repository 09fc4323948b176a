"""Triton ensemble vs raw in-process ONNX Runtime, side by side in one run (ratios, not absolute times).

    python bench/bench_triton.py [--repository model_repository] [--quick]

Raw ONNX Runtime sorts all texts by length and runs batches of 32: the honest ceiling on this
machine. Triton is measured over gRPC with 32 concurrent single-text clients and with batch-32
requests (2 in flight). Both use the same .onnx files and the same ONNX Runtime thread count.
Finally the int8 export is compared with fp32 on raw ONNX Runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from triton_embeddings import contract  # noqa: E402
from triton_embeddings.defaults import DEFAULT_MODEL, default_source  # noqa: E402
from triton_embeddings.export import triton_config as tc  # noqa: E402
from triton_embeddings.export.exporter import export_model  # noqa: E402
from triton_embeddings.export.options import ExportOptions  # noqa: E402
from triton_embeddings.export.pipeline import OnnxPipeline  # noqa: E402
from triton_embeddings.local.launcher import TritonServer  # noqa: E402
from triton_embeddings.triton_models.tokenize import TextTokenizer  # noqa: E402

NAME = DEFAULT_MODEL
TOKENIZER, ENCODER, POOLER = contract.step_names(NAME)
VOCAB = (
    "the server model batch token request latency throughput vector search index query document cluster "
    "gpu memory queue embedding semantic similarity language network cloud private data cost scale "
    "inference engine dynamic length padding sentence paragraph context window retrieval answer question "
    "customer support ticket invoice contract policy report summary weather travel music history science"
).split()


def workloads(n_short: int, n_long: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    short = [" ".join(rng.choices(VOCAB, k=rng.randint(10, 15))) for _ in range(n_short)]
    long = [" ".join(rng.choices(VOCAB, k=rng.randint(230, 250))) for _ in range(n_long)]  # ~256 tokens
    mixed = short[: 4 * (n_long // 1)] + long
    rng.shuffle(mixed)
    return {"SHORT": short, "LONG": long, "MIXED": mixed}


def onnx_file(repo: Path, step: str) -> Path:
    return repo / step / "1" / contract.OnnxStepParams().onnx_file


def ensure_repository(repo: Path | None, work: Path) -> Path:
    if repo and onnx_file(repo, ENCODER).exists():
        return repo
    target = work / "fp32"
    export_model(default_source(), target, ExportOptions(name=NAME), log=lambda _: None)
    return target


def raw_pipeline(repo: Path, threads: int) -> OnnxPipeline:
    """The repository's own tokenizer step (prompt, pad id, lower-casing), encoder and pooler, in-process."""
    params = contract.TokenizerParams.from_config(tc.load(repo / TOKENIZER / "config.pbtxt"))
    tokenizer = TextTokenizer.from_params(params, repo / TOKENIZER / "1")
    return OnnxPipeline(tokenizer, str(onnx_file(repo, ENCODER)), str(onnx_file(repo, POOLER)), threads=threads)


def set_threads(repo: Path, threads: int) -> None:
    """Give the repository's Python-backend ONNX steps `threads` ONNX Runtime threads each."""
    for step in (ENCODER, POOLER):
        path = repo / step / "config.pbtxt"
        config = tc.parse(path.read_text())
        params = contract.OnnxStepParams.from_config(tc.as_json(config))
        for key, value in dataclasses.replace(params, intra_op_threads=threads).to_parameters().items():
            config.parameters[key].string_value = value
        path.write_text(tc.render(config))


def time_raw(pipeline: OnnxPipeline, texts: list[str]) -> float:
    pipeline.embed(texts[:32])  # warm
    start = time.perf_counter()
    pipeline.embed(texts, batch_size=32, sort_by_length=True)
    return len(texts) / (time.perf_counter() - start)


async def time_triton(url: str, texts: list[str], batch: int, concurrency: int) -> float:
    import tritonclient.grpc.aio as aio

    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    async with aio.InferenceServerClient(url) as client:

        async def infer(chunk):
            inp = aio.InferInput(contract.TEXT, [len(chunk), 1], "BYTES")
            inp.set_data_from_numpy(np.array([[t.encode()] for t in chunk], dtype=object))
            await client.infer(NAME, [inp])

        await asyncio.gather(*(infer(c) for c in chunks[:concurrency]))  # warm
        queue: asyncio.Queue = asyncio.Queue()
        for c in chunks:
            queue.put_nowait(c)

        async def worker():
            while not queue.empty():
                await infer(queue.get_nowait())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads, both sides (0 = all cores)")
    parser.add_argument("--quick", action="store_true", help="fewer texts")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/Triton rounds per workload")
    args = parser.parse_args()
    n_short, n_long = (128, 32) if args.quick else (512, 128)
    texts = workloads(n_short, n_long)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        repo = ensure_repository(args.repository, work)
        if args.threads:
            copy = work / "repo"
            shutil.copytree(repo, copy)
            set_threads(copy, args.threads)
            repo = copy
        print(
            f"cores: {os.cpu_count()}, ONNX Runtime threads: {args.threads or 'all'}; "
            f"texts: SHORT {len(texts['SHORT'])}, LONG {len(texts['LONG'])}, MIXED {len(texts['MIXED'])}"
        )

        raw = raw_pipeline(repo, args.threads)
        rows = []
        server = TritonServer.on_free_ports(repo, log_file=work / "triton.log")
        with server:
            for label, items in texts.items():
                # Rounds alternate raw and Triton, so a noisy neighbour hits both; report medians.
                runs = []
                for _ in range(args.rounds):
                    ceiling = time_raw(raw, items)
                    single = asyncio.run(time_triton(server.grpc_url, items, batch=1, concurrency=32))
                    batched = asyncio.run(time_triton(server.grpc_url, items, batch=32, concurrency=2))
                    runs.append((ceiling, single, batched, single / ceiling, batched / ceiling))
                rows.append((label, *np.median(np.array(runs), axis=0)))

        print(f"\nmedians of {args.rounds} alternating rounds")
        print(f"{'workload':<8} {'raw ORT/s':>10} {'32x single/s':>13} {'ratio':>6} {'batch-32/s':>11} {'ratio':>6}")
        for label, ceiling, single, batched, r_single, r_batched in rows:
            print(f"{label:<8} {ceiling:>10.1f} {single:>13.1f} {r_single:>6.2f} {batched:>11.1f} {r_batched:>6.2f}")

        print("\nint8 (CPU) vs fp32, raw ONNX Runtime on MIXED:")
        result = export_model(
            default_source(), work / "int8", ExportOptions(name=NAME, precision="int8"), log=lambda _: None
        )
        q = raw_pipeline(work / "int8", args.threads)
        fp32_rate, int8_rate = time_raw(raw, texts["MIXED"]), time_raw(q, texts["MIXED"])
        print(
            f"  fp32 {fp32_rate:.1f}/s, int8 {int8_rate:.1f}/s, speedup {int8_rate / fp32_rate:.2f}x, "
            f"min cosine vs sentence-transformers {result.verification.min_cosine:.4f} ({result.note})"
        )


if __name__ == "__main__":
    main()
