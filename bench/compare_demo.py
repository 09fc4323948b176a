"""The compare report shown in docs/migration.md, and the measured CPU cost figure in the README.

    HF_HUB_OFFLINE=1 python bench/compare_demo.py --out docs/compare-demo   # ~3 minutes on 2 cores

Exports all-MiniLM-L6-v2 (fp32) and its int8 export into one repository (once, kept in --repository),
serves both through the embedded Triton and one gateway process with its cache off (C asks for the same
texts as A: a cache would answer them and C's speed would mean nothing), then runs the two real tools:
- embeddings-compare on the labelled test set (tests/compare/data): A = fp32, B = int8, C = fp32 asked for
  8 dimensions (a deliberately poor model: MiniLM is not trained for truncation);
- embeddings-reembed over 4,000 distinct synthetic texts, for the throughput behind the cost per 1M tokens.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance import provenance  # noqa: E402  (bench/provenance.py, beside this script)

from tests.compare.data.make_data import OBJECTS, SUBJECTS, TIMES, VERBS  # noqa: E402
from triton_embeddings.compare.cost import hourly_cost_per_1m  # noqa: E402
from triton_embeddings.local.launcher import TritonServer  # noqa: E402
from triton_embeddings.local.processes import free_port, stop_process, wait_http  # noqa: E402

DATA = ROOT / "tests" / "compare" / "data"
FP32, INT8 = "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-int8"


def ensure_repository(repo: Path) -> None:
    from triton_embeddings.defaults import DEFAULT_HUB_ID, default_source
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions
    from triton_embeddings.local.serve import missing_weights

    for name, precision in ((FP32, "fp32"), (INT8, "int8")):
        if missing_weights(repo, name):
            export_model(default_source(), repo,
                         ExportOptions(name=name, precision=precision, source_label=DEFAULT_HUB_ID))


def start_gateway(triton: TritonServer, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, EMBEDDINGS_PORT=str(port), EMBEDDINGS_TRITON_GRPC_URL=triton.grpc_url,
               EMBEDDINGS_TRITON_METRICS_URL="", EMBEDDINGS_ACCESS_LOG="false", EMBEDDINGS_CACHE="none",
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "triton_embeddings.gateway"], env=env, cwd=ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/ready", proc=proc)
    return proc, f"http://127.0.0.1:{port}/v1"


def synthetic_corpus(path: Path) -> int:
    texts = [f"{s} {v} {o} {t}." for s, v, o, t in itertools.product(SUBJECTS, VERBS, OBJECTS, TIMES)]
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return len(texts)


def run(*cmd: str) -> str:
    result = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if result.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{result.stderr}")
    return result.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("compare-demo"))
    p.add_argument("--repository", type=Path, default=Path(tempfile.gettempdir()) / "compare-demo-repository")
    p.add_argument("--json", type=Path, help="also write the re-embed throughput and cost, with provenance, here")
    p.add_argument("--node-hour-price", type=float, default=0.0893,
                   help="USD/h of the machine serving the models (default: an on-demand 2-vCPU VM, see docs)")
    args = p.parse_args()
    prov = provenance("bench/compare_demo.py")
    ensure_repository(args.repository)
    work = Path(tempfile.mkdtemp(prefix="compare-demo-"))
    with TritonServer.on_free_ports(args.repository, log_file=work / "triton.log") as triton:
        gw, v1 = start_gateway(triton, work / "gateway.log")
        try:
            run("triton_embeddings.compare", "--corpus", str(DATA / "corpus.jsonl"),
                "--queries", str(DATA / "queries.jsonl"), "--qrels", str(DATA / "qrels.tsv"),
                "--a", f"{v1}:{FP32}", "--b", f"{v1}:{INT8}", "--c", f"{v1}:{FP32}", "--c-dimensions", "8",
                "--node-hour-price", str(args.node_hour_price), "--batch-size", "32", "--no-progress",
                "--out", str(args.out), "--cache", str(work / "cache.sqlite"))
            n = synthetic_corpus(work / "synthetic.jsonl")
            reembed = {}
            for model in (FP32, INT8):
                start = time.perf_counter()
                line = run("triton_embeddings.compare.reembed", "--input", str(work / "synthetic.jsonl"),
                           "--output", str(work / f"{model}.jsonl"), "--url", v1, "--model", model,
                           "--batch-size", "64", "--concurrency", "4", "--no-progress").strip().splitlines()[-1]
                tokens, seconds = (float(x) for x in re.search(r"\((\d+) tokens\) in ([\d.]+)s", line).groups())
                per_1m = hourly_cost_per_1m(args.node_hour_price, tokens / seconds)
                print(f"reembed {model}: {n} texts, {time.perf_counter() - start:.1f}s wall: {line}; "
                      f"{tokens / seconds:,.0f} tokens/s -> ${per_1m:.4f} per 1M tokens at ${args.node_hour_price}/h")
                reembed[model] = {"texts": n, "tokens": int(tokens), "seconds": seconds,
                                  "tokens_per_s": round(tokens / seconds), "cost_per_1m_usd": round(per_1m, 4)}
        finally:
            stop_process(gw)
    if args.json:
        doc = {"provenance": prov, "node_hour_price_usd": args.node_hour_price,
               "reembed": {"batch_size": 64, "concurrency": 4, "models": reembed},
               "compare": json.loads((args.out / "report.json").read_text())}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
