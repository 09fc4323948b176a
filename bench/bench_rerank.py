"""Rerank benchmark: pairs/s through the gateway, against the same ONNX model in-process and a seed-style server.

    HF_HUB_OFFLINE=1 python bench/bench_rerank.py            # ~5 minutes on 2 cores
    HF_HUB_OFFLINE=1 python bench/bench_rerank.py --quick    # smoke run (CI), with the tiny cross-encoder

In one run, on requests of one query and 32 documents (3-150 words each, every request distinct) and the
same cross-encoder on every path:
- in-process: the exported pipeline (pair tokenizer -> ONNX classifier -> score step) with ONNX Runtime on
  every core, all pairs sorted by length and run in batches of 32: the ceiling;
- gateway: `POST /v1/rerank` through the gateway (cache off) and the embedded Triton, driven by wrk;
- reference: the seed style, an async FastAPI handler calling `CrossEncoder.predict`, driven by wrk.
Rounds alternate the three; medians, ratios and per-process CPU are printed. `--int8` adds the same
cross-encoder's int8 export (verified against CrossEncoder.predict like any export), in-process and
through the gateway, beside the fp32 paths.

The default model has the shape of cross-encoder/ms-marco-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, one
label): all-MiniLM-L6-v2's encoder weights with a random score head, since no cross-encoder's weights can be
downloaded here; throughput depends on the shape, not on the trained values. `--model` takes a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import procstat  # noqa: E402
from provenance import provenance  # noqa: E402

from bench import Load, Run, spawn, wrk  # noqa: E402  (bench/bench.py)
from triton_embeddings.local.launcher import TritonServer  # noqa: E402
from triton_embeddings.local.processes import free_port, stop_process, wait_http  # noqa: E402

MODEL = "bench-reranker"
INT8 = "-int8"  # suffix of the int8 export's name; its paths: in-process-int8, gateway-int8
WORDS = ("password reset login account email server batch token model query document river station city "
         "music history science market night water house school system group number world state").split()


def make_texts(n_queries: int = 256, n_docs: int = 512, seed: int = 0) -> tuple[list[str], list[str]]:
    import random

    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [text(3, 8) for _ in range(n_queries)], [text(3, 150) for _ in range(n_docs)]


def lua_pairs(queries: list[str], docs: list[str], requests: int, per_request: int, prefix: str) -> list:
    """The (query, document) pairs bench/embeddings.lua sends for `requests` rerank requests."""
    pairs = []
    for n in range(1, requests + 1):
        query = f"{prefix}-1-{n} {queries[n % len(queries)]}"
        pairs += [(query, f"{prefix}-1-{n}-{k} {docs[(n * per_request + k) % len(docs)]}")
                  for k in range(1, per_request + 1)]
    return pairs


def build_minilm_cross_encoder(folder: Path) -> Path:
    """A CrossEncoder of ms-marco-MiniLM-L6-v2's shape: all-MiniLM-L6-v2's encoder plus a random score head."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    from triton_embeddings.defaults import default_source

    torch.manual_seed(0)
    staging = folder.with_name(folder.name + ".hf")
    BertForSequenceClassification.from_pretrained(default_source(), num_labels=1).save_pretrained(staging)
    AutoTokenizer.from_pretrained(default_source()).save_pretrained(staging)
    CrossEncoder(str(staging), device="cpu", max_length=512).save(str(folder))
    return folder


def export(source: str, work: Path, int8: bool) -> Path:
    """MODEL (fp32) and, with `int8`, MODEL-int8 (same cross-encoder, int8 export) in one repository."""
    from triton_embeddings.export.options import ExportOptions
    from triton_embeddings.export.rerank_exporter import export_reranker

    repo = work / "repository"
    export_reranker(source, repo, ExportOptions(name=MODEL), log=lambda _: None)
    if int8:
        export_reranker(source, repo, ExportOptions(name=MODEL + INT8, precision="int8"), log=lambda _: None)
    return repo


def in_process(repo: Path, pairs: list, name: str = MODEL) -> Run:
    """The ceiling: the exported pipeline in this process, every pair sorted by length, batches of 32."""
    from triton_embeddings import contract as c
    from triton_embeddings.export.kinds.rerank import RerankPipeline
    from triton_embeddings.export.triton_config import load as load_config
    from triton_embeddings.triton_models.pair_tokenize import PairTokenizer

    tok_dir, enc_dir, score_dir = (repo / n / "1" for n in c.rerank_step_names(name))
    tokenizer = PairTokenizer.from_config(load_config(tok_dir.parent / "config.pbtxt"), tok_dir)
    pipe = RerankPipeline(tokenizer, str(enc_dir / "model.onnx"), str(score_dir / "model.onnx"))
    pipe.predict(pairs[:64])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    pipe.predict(pairs, batch_size=32)
    wall = time.perf_counter() - t0
    return Run(len(pairs) / wall, 0.0, 0.0, 0, {"bench": (time.process_time() - c0) / wall})


def start(source: str, repo: Path, work: Path):
    """Triton, the gateway and the reference server; returns (triton, {path: (url, process)})."""
    triton = TritonServer.on_free_ports(repo, log_file=work / "triton.log").start()
    gw_port, ref_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    gw = spawn([sys.executable, "-m", "triton_embeddings.gateway"], dict(
        env, EMBEDDINGS_PORT=str(gw_port), EMBEDDINGS_TRITON_GRPC_URL=triton.grpc_url, EMBEDDINGS_CACHE="none",
        EMBEDDINGS_TRITON_METRICS_URL="", EMBEDDINGS_ACCESS_LOG="false", EMBEDDINGS_LOG_LEVEL="warning"),
        work / "gateway.log")
    ref = spawn([sys.executable, "-m", "uvicorn", "bench.reference_rerank_server:app", "--port", str(ref_port),
                 "--log-level", "warning", "--no-access-log"], dict(env, REFERENCE_RERANKER=source),
                work / "reference.log")
    servers = {"gateway": (f"http://127.0.0.1:{gw_port}", gw), "reference": (f"http://127.0.0.1:{ref_port}", ref)}
    try:
        wait_http(servers["gateway"][0] + "/ready", 180, gw)
        wait_http(servers["reference"][0] + "/docs", 180, ref)
    except BaseException:
        stop(triton, servers)
        raise
    return triton, servers


def stop(triton, servers: dict) -> None:
    for _, proc in servers.values():
        stop_process(proc)
    triton.stop()


def run_rounds(args, repo: Path, triton, servers: dict, files) -> list[dict[str, Run]]:
    groups = procstat.triton_groups(triton.process.pid)
    groups.update({name: [proc.pid] for name, (_, proc) in servers.items()})
    load = Load("R", args.clients, args.docs, 0, f"{args.clients} clients x 1 query + {args.docs} documents")
    queries, docs = (Path(f).read_text().splitlines() for f in files)
    targets = {name: (url, MODEL) for name, (url, _) in servers.items()}
    if args.int8:
        targets["gateway-int8"] = (servers["gateway"][0], MODEL + INT8)
    for name, (url, model) in targets.items():  # warm-up
        wrk(url, "rerank", model, load, 1.0, f"warm{name}", files, groups, None)
    rounds = []
    for r in range(args.rounds):
        pairs = lua_pairs(queries, docs, args.raw_requests, args.docs, f"r{r}raw")
        out = {"in-process": in_process(repo, pairs)}
        if args.int8:
            out["in-process-int8"] = in_process(repo, pairs, MODEL + INT8)
        for name, (url, model) in targets.items():
            metrics = triton.metrics_url if name.startswith("gateway") else None
            out[name] = wrk(url, "rerank", model, load, args.seconds, f"r{r}{name}", files, groups, metrics)
        print("round", r + 1, "  ".join(f"{k} {v.texts_per_s:.0f} pairs/s" for k, v in out.items()),
              file=sys.stderr, flush=True)
        rounds.append(out)
    return rounds


def summarize(rounds: list[dict[str, Run]]) -> dict:
    """Medians of rounds per path, and the ratios docs quote, each the ratio of two of those medians."""
    paths = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        keys = sorted({k for run in runs for k in run.cores})
        paths[name] = {"pairs_per_s": round(statistics.median(x.texts_per_s for x in runs), 1),
                       "errors": sum(x.errors for x in runs),
                       "cores": {k: round(statistics.median(x.cores.get(k, 0.0) for x in runs), 2) for k in keys}}
        if not name.startswith("in-process"):
            paths[name]["p50_ms"] = round(statistics.median(x.p50_ms for x in runs), 1)
    pairs = [("gateway", "in-process"), ("gateway", "reference"), ("in-process", "reference"),
             ("gateway-int8", "in-process-int8"), ("gateway-int8", "reference"), ("in-process-int8", "reference")]
    ratios = {f"{a} / {b}": round(paths[a]["pairs_per_s"] / paths[b]["pairs_per_s"], 2)
              for a, b in pairs if a in paths and b in paths}
    return {"paths": paths, "ratios": ratios}


def report(args, rounds: list[dict[str, Run]], summary: dict) -> int:
    errors = sum(p["errors"] for p in summary["paths"].values())
    print(f"rerank: {args.clients} clients x (1 query + {args.docs} documents of 3-150 words), model {args.label}; "
          f"medians of {len(rounds)} alternating round(s), {args.seconds:g} s per server run; errors {errors}")
    for name, p in summary["paths"].items():
        cpu = " ".join(f"{k} {v:.2f}" for k, v in p["cores"].items() if v >= 0.005)
        lat = f"  p50 {p['p50_ms']:7.1f} ms" if "p50_ms" in p else ""
        print(f"  {name:<16}{p['pairs_per_s']:9.0f} pairs/s{lat:<18}  CPU cores: {cpu}")
    goals = {"gateway / in-process": "goal >= 0.8", "gateway / reference": "goal >= 3",
             "in-process / reference": "what any server on this fp32 ONNX model can reach"}
    for name, ratio in summary["ratios"].items():
        print(f"  {name:<36}: {ratio:.2f}x" + (f" ({goals[name]})" if name in goals else ""))
    return 1 if errors else 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="CrossEncoder folder or hub id (default: ms-marco-MiniLM-L6-v2's shape, built here)")
    p.add_argument("--tiny", action="store_true", help="the 2-layer test cross-encoder (per-request overhead only)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--docs", type=int, default=32, help="documents per request")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 3; --quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per server run (default 20; --quick 2)")
    p.add_argument("--int8", action="store_true",
                   help="also the same cross-encoder's int8 export, in-process and through the gateway")
    p.add_argument("--quick", action="store_true", help="smoke run (CI): the tiny model, 1 short round")
    p.add_argument("--json", type=Path, help="also write the run's figures and provenance here")
    args = p.parse_args(argv)
    args.tiny = args.tiny or (args.quick and not args.model)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 20.0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    prov = provenance("bench/bench_rerank.py", argv)
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        work = Path(tmp)
        source = args.model
        if source is None and args.tiny:
            from tests.tiny_models import build_cross_encoder

            source = str(build_cross_encoder(work / "tiny-cross-encoder"))
        elif source is None:
            source = str(build_minilm_cross_encoder(work / "minilm-l6-cross-encoder"))
        args.label = args.model or ("tiny (2 layers, hidden 32)" if args.tiny else "MiniLM-L6 shape (6 layers, 384)")
        args.raw_requests = 8 if args.tiny or args.quick else 24
        files = (work / "queries.txt", work / "documents.txt")
        for f, texts in zip(files, make_texts()):
            f.write_text("\n".join(texts) + "\n")
        repo = export(source, work, args.int8)
        triton, servers = start(source, repo, work)
        try:
            rounds = run_rounds(args, repo, triton, servers, files)
        finally:
            stop(triton, servers)
    summary = summarize(rounds)
    if args.json:
        doc = {"provenance": prov, "model": args.label, "clients": args.clients, "docs_per_request": args.docs,
               "rounds_run": len(rounds), "seconds_per_run": args.seconds, "summary": summary,
               "rounds": [{k: vars(v) for k, v in r.items()} for r in rounds]}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return report(args, rounds, summary)


if __name__ == "__main__":
    sys.exit(main())
