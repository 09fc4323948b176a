"""The int8 rewrite (smoothing, outlier split) on MiniLM: exact in fp32, and what lets every MatMul be int8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from triton_embeddings import contract
from triton_embeddings.export import int8_rewrite, onnx_export, verify
from triton_embeddings.export.pipeline import OnnxPipeline, calibration_feeds
from triton_embeddings.export.steps import calibration_texts
from triton_embeddings.export.triton_config import load
from triton_embeddings.triton_models.onnx_session import make_session
from triton_embeddings.triton_models.tokenize import TextTokenizer


@pytest.fixture(scope="module")
def steps(model_repository):
    tokenizer_step, encoder, pooler = (model_repository / s for s in contract.step_names("all-MiniLM-L6-v2"))
    params = contract.TokenizerParams.from_config(load(tokenizer_step / "config.pbtxt"))
    tokenizer = TextTokenizer.from_params(params, tokenizer_step / "1")
    return tokenizer, encoder / "1" / "model.onnx", pooler / "1" / "model.onnx"


@pytest.fixture(scope="module")
def rewritten(steps, tmp_path_factory):
    tokenizer, encoder, _ = steps
    feeds = calibration_feeds(tokenizer, calibration_texts(None))
    dst = tmp_path_factory.mktemp("rewrite") / "rewritten.onnx"
    return int8_rewrite.rewrite_for_int8(encoder, dst, feeds, onnx_export.ffn_output_matmuls(encoder))


def test_rewrite_is_exact_in_fp32(steps, rewritten):
    tokenizer, encoder, _ = steps
    texts = [t for group in verify.verification_texts().values() for t in group]
    (feed,) = calibration_feeds(tokenizer, texts, batch_size=len(texts))
    before, after = (make_session(str(p)) for p in (encoder, rewritten.path))
    names = [i.name for i in before.get_inputs()]
    (a,), (b,) = (s.run(None, {k: feed[k] for k in names}) for s in (before, after))
    assert np.abs(a - b).max() < 1e-4
    assert rewritten.smoothed == 6 * 4  # per layer: query, key, value (one shared input) and the up-projection


def test_each_down_projection_sends_its_widest_channels_through_fp32(rewritten):
    graph = onnx.load(str(rewritten.path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outliers = [n for n in graph.node if n.name in rewritten.keep_fp32]
    assert len(outliers) == 6
    for node in outliers:
        assert weights[node.input[1]].shape == (int8_rewrite.OUTLIER_CHANNELS, 384)


def test_rewrite_is_what_lets_every_matmul_be_int8(steps, rewritten, st_model, tmp_path):
    """All MatMuls int8: below the bar on the plain export, above it (with the selection margin) rewritten."""
    tokenizer, encoder, pooler = steps
    texts = verify.selection_texts()
    reference = verify.reference_embeddings(st_model, texts)

    def min_cosine(src, keep, name):
        path = onnx_export.to_int8(src, tmp_path / name, onnx_export.Int8Plan(name, keep))
        return verify.verify(OnnxPipeline(tokenizer, str(path), str(pooler)), reference, texts, "int8").min_cosine

    plain = min_cosine(encoder, (), "plain.onnx")
    smoothed = min_cosine(rewritten.path, rewritten.keep_fp32, "rewritten.onnx")
    assert plain < verify.THRESHOLDS["int8"] <= verify.THRESHOLDS["int8"] + verify.SELECTION_MARGIN <= smoothed, \
        (plain, smoothed)
