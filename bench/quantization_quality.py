"""Retained quality of int8 and binary embeddings on a held-out pair set with human-style scores.

    python bench/quantization_quality.py --repository model_repository --model all-MiniLM-L6-v2 all-mpnet-base-v2

For each exported model: the served pipeline (the repository's ONNX files, in-process) embeds both sides
of every pair of bench/data/sts_pairs.tsv (103 pairs written for this project, 0-5 scores, never used for
calibration); quantization uses the ranges calibrated at export. Printed: Spearman correlation of the
scores with cosine (float32, int8) and Hamming similarity (binary), the ratio to float, bytes per vector.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from provenance import provenance  # noqa: E402  (bench/provenance.py, beside this script)

from triton_embeddings import contract, quantize  # noqa: E402
from triton_embeddings.export.kinds.embedding import OnnxPipeline  # noqa: E402
from triton_embeddings.export.triton_config import load  # noqa: E402
from triton_embeddings.triton_models.tokenize import TextTokenizer  # noqa: E402

PAIRS = ROOT / "bench" / "data" / "sts_pairs.tsv"


def read_pairs(path: Path = PAIRS) -> tuple[np.ndarray, list[str], list[str]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return np.array([float(r[0]) for r in rows]), [r[1] for r in rows], [r[2] for r in rows]


def _config(repository: Path, name: str) -> dict:
    return load(repository / name / "config.pbtxt")


def served_pipeline(repository: Path, model: str) -> tuple[OnnxPipeline, contract.EnsembleParams]:
    """The exported model's tokenizer, encoder and pooler run in-process, and its ensemble parameters."""
    tok_name, enc_name, pool_name = contract.step_names(model)
    params = contract.TokenizerParams.from_config(_config(repository, tok_name))
    tokenizer = TextTokenizer.from_params(params, repository / tok_name / "1")
    pipeline = OnnxPipeline(tokenizer, str(repository / enc_name / "1" / "model.onnx"),
                            str(repository / pool_name / "1" / "model.onnx"))
    return pipeline, contract.EnsembleParams.from_config(_config(repository, model))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def evaluate(repository: Path, model: str) -> dict[str, float]:
    """Spearman (x100) per output type, int8/binary relative to float, and bytes per vector."""
    scores, left, right = read_pairs()
    pipeline, params = served_pipeline(Path(repository), model)
    a, b = pipeline.embed(left), pipeline.embed(right)
    ranges = quantize.ranges_for(params.quantization_ranges, a.shape[1], renormalized=False)
    sims = {
        "float": _cosine(a, b),
        "int8": _cosine(quantize.quantize(a, "int8", ranges), quantize.quantize(b, "int8", ranges)),
        "binary": quantize.hamming_similarity(quantize.quantize(a, "ubinary"), quantize.quantize(b, "ubinary")),
    }
    out = {k: 100 * float(spearmanr(scores, v).statistic) for k, v in sims.items()}
    out["int8_ratio"], out["binary_ratio"] = out["int8"] / out["float"], out["binary"] / out["float"]
    d = a.shape[1]
    out["bytes_float"], out["bytes_int8"], out["bytes_binary"] = 4 * d, d, quantize.packed_length(d, "binary")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument("--model", nargs="+", default=["all-MiniLM-L6-v2"])
    p.add_argument("--json", type=Path, help="also write the figures and provenance here")
    args = p.parse_args()
    prov = provenance("bench/quantization_quality.py")
    models = []
    print(f"{len(read_pairs()[0])} pairs from {PAIRS.relative_to(ROOT)}")
    print(f"{'model':<22} {'float':>6} {'int8':>6} {'ratio':>6} {'binary':>7} {'ratio':>6}   bytes f32/int8/binary")
    for model in args.model:
        r = evaluate(args.repository, model)
        print(f"{model:<22} {r['float']:6.1f} {r['int8']:6.1f} {r['int8_ratio']:6.3f} {r['binary']:7.1f} "
              f"{r['binary_ratio']:6.3f}   {r['bytes_float']}/{r['bytes_int8']}/{r['bytes_binary']}")
        models.append({"model": model, "float32": round(r["float"], 1), "int8": round(r["int8"], 1),
                       "binary": round(r["binary"], 1),
                       "bytes": [r["bytes_float"], r["bytes_int8"], r["bytes_binary"]]})
    if args.json:
        doc = {"provenance": prov, "pairs": len(read_pairs()[0]), "models": models}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
