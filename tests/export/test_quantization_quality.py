"""int8 and binary outputs keep the ranking quality of float on the held-out pair set (bench/data/sts_pairs.tsv)."""

import importlib.util
from pathlib import Path

from tests.conftest import DEFAULT_MODEL

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quantization_quality.py"


def test_int8_and_binary_keep_spearman(model_repository):
    spec = importlib.util.spec_from_file_location("quantization_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.evaluate(model_repository, DEFAULT_MODEL)
    assert result["float"] > 80  # the pair set separates related from unrelated pairs at all
    assert result["int8_ratio"] >= 0.99  # the goal
    assert result["binary_ratio"] >= 0.95
    assert (result["bytes_float"], result["bytes_int8"], result["bytes_binary"]) == (1536, 384, 48)
