"""The int8 rewrite (smoothing, outlier split) on MiniLM: exact in fp32, and what lets every MatMul be int8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from triton_embeddings import contract
from triton_embeddings.export import int8_rewrite, onnx_export
from triton_embeddings.export.kinds import embedding
from triton_embeddings.export.kinds.embedding import OnnxPipeline, calibration_feeds
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
    texts = [t for group in embedding.verification_texts().values() for t in group]
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
    texts = embedding.selection_texts()
    reference = embedding.reference_embeddings(st_model, texts)

    def min_cosine(src, keep, name):
        path = onnx_export.to_int8(src, tmp_path / name, onnx_export.Int8Plan(name, keep))
        return embedding.verify(OnnxPipeline(tokenizer, str(path), str(pooler)), reference, texts, "int8").min_cosine

    plain = min_cosine(encoder, (), "plain.onnx")
    smoothed = min_cosine(rewritten.path, rewritten.keep_fp32, "rewritten.onnx")
    bar = embedding.THRESHOLDS["int8"]
    assert plain < bar <= bar + embedding.SELECTION_MARGIN <= smoothed, (plain, smoothed)


def test_a_channel_silent_in_calibration_is_not_blown_up(tmp_path):
    """LayerNorm -> MatMul where one channel is always 0 in calibration (gamma 0): its smoothing factor is
    floored, so a value it carries at serving time is not multiplied by ~1/sqrt(1e-5)."""
    from onnx import TensorProto, helper

    gamma = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
         helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 3])],
        [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(4, np.float32), "beta"),
         numpy_helper.from_array(w, "w")])
    src = tmp_path / "ln.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    feeds = [{"x": x, contract.ONNX_ATTENTION_MASK: np.ones((2, 5), np.int64)}]
    out = int8_rewrite.rewrite_for_int8(src, tmp_path / "rw.onnx", feeds, [])
    inverse = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out.path)).graph.initializer}["h_smoothing"]
    assert out.smoothed == 1
    assert inverse[2] <= 10 * np.median(inverse), inverse
    (a,), (b,) = (make_session(str(p)).run(None, {"x": x}) for p in (src, out.path))
    np.testing.assert_allclose(a, b, atol=1e-5)
