"""The in-process ceiling of `make bench`: the served model's own files run in-process, texts sorted by length,
batches of 32, measured two ways in the same round, and the better one taken:
- one ONNX Runtime session on every core (`threads=0`);
- one single-thread session per core, in parallel processes, each on its share of the texts.
Small batches use many cores badly, so the second often wins; every ratio is then against the real limit of
the machine, not against one configuration of it."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from triton_embeddings import contract

ONE_SESSION, PER_CORE = "1 session x all cores", "1 process x 1 thread per core"


def raw_pipeline(repo: Path, name: str, threads: int = 0):
    """The repository's own tokenizer step (prompt, pad id, lower-casing), encoder and pooler, in-process."""
    from triton_embeddings.export import triton_config as tc
    from triton_embeddings.export.kinds.embedding import OnnxPipeline
    from triton_embeddings.triton_models.tokenize import TextTokenizer

    tokenizer_step, encoder, pooler = (repo / step for step in contract.step_names(name))
    params = contract.TokenizerParams.from_config(tc.load(tokenizer_step / "config.pbtxt"))
    tokenizer = TextTokenizer.from_params(params, tokenizer_step / "1")
    onnx_file = contract.OnnxStepParams().onnx_file
    return OnnxPipeline(tokenizer, str(encoder / "1" / onnx_file), str(pooler / "1" / onnx_file), threads=threads)


def _serve(conn, repo: str, name: str) -> None:
    """A per-core worker: one single-thread pipeline; embeds each share it is sent, answers its CPU seconds."""
    pipeline = raw_pipeline(Path(repo), name, threads=1)
    conn.send("ready")
    while (texts := conn.recv()) is not None:
        c0 = time.process_time()
        pipeline.embed(texts, batch_size=32, sort_by_length=True)
        conn.send(time.process_time() - c0)


class Ceiling:
    """Both ways of running the model in-process; `run` measures both on the same texts."""

    def __init__(self, repo: Path, name: str, threads: int = 0, processes: int | None = None):
        self.single = raw_pipeline(repo, name, threads)
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(processes or os.cpu_count() or 1):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, str(repo), name), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if conn.recv() != "ready":
                raise RuntimeError("a ceiling worker failed to start")

    def embed_batch(self, texts: list[str]):
        return self.single.embed_batch(texts)

    def run(self, texts: list[str]) -> dict[str, tuple[float, float]]:
        """{way: (texts/s, cores used)} for the same texts."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.single.embed(texts, batch_size=32, sort_by_length=True)
        wall = time.perf_counter() - t0
        out = {ONE_SESSION: (len(texts) / wall, (time.process_time() - c0) / wall)}
        t0 = time.perf_counter()
        for i, conn in enumerate(self.conns):
            conn.send(texts[i :: len(self.conns)])
        cpu = sum(conn.recv() for conn in self.conns)
        wall = time.perf_counter() - t0
        out[PER_CORE] = (len(texts) / wall, cpu / wall)
        return out

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(5)
