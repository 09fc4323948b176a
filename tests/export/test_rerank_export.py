"""The rerank export: cross-encoders recognised from their files, verified against CrossEncoder.predict."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from tests.tiny_models import build_cross_encoder
from triton_embeddings import contract as c
from triton_embeddings.export import cli
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.cross_encoder import build_score_step, is_cross_encoder
from triton_embeddings.export.exporter import ExportError
from triton_embeddings.export.kinds import rerank
from triton_embeddings.export.kinds.rerank import RerankPipeline
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.rerank_exporter import export_reranker
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer

QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def hf_cross_encoder(tmp_path_factory) -> str:
    """The same kind of model saved as a plain `BertForSequenceClassification` folder (no ST files)."""
    return str(build_cross_encoder(tmp_path_factory.mktemp("hf_ce") / "hf", seed=1, as_hf=True, max_length=64))


def test_cross_encoders_are_recognised_from_their_files(cross_encoder_source, hf_cross_encoder,
                                                         default_model_source, tmp_path):
    assert is_cross_encoder(cross_encoder_source)
    assert is_cross_encoder(hf_cross_encoder)
    assert not is_cross_encoder(default_model_source)  # a SentenceTransformer
    two_labels = tmp_path / "two"
    two_labels.mkdir()
    config = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "NO", "1": "YES"}}
    (two_labels / "config.json").write_text(json.dumps(config))
    assert not is_cross_encoder(str(two_labels))
    assert not is_cross_encoder(str(tmp_path / "missing"))


def _configs(repo, name):
    return {n: tc.parse((repo / n / "config.pbtxt").read_text()) for n in (name, *c.rerank_step_names(name))}


def test_export_writes_a_verified_rerank_ensemble(tmp_path, cross_encoder_source, cross_encoder, capsys):
    repo = tmp_path / "repo"
    assert cli.main([cross_encoder_source, "--name", "rr", "--repository", str(repo)]) == 0
    err = capsys.readouterr().err
    assert "PASS" in err and "CrossEncoder.predict" in err
    configs = _configs(repo, "rr")
    from google.protobuf import json_format

    ensemble = json_format.MessageToDict(configs["rr"], preserving_proto_field_name=True)
    assert c.is_rerank_ensemble(ensemble) and not c.is_embedding_ensemble(ensemble)
    params = c.RerankParams.from_config(ensemble)
    assert (params.kind, params.activation, params.max_seq_length) == ("rerank", "sigmoid", 128)
    assert [o.name for o in configs["rr"].output] == list(c.RERANK_OUTPUTS)
    assert configs["rr_encoder"].parameters["regroup_by_length"].string_value == "true"
    # The written files alone reproduce CrossEncoder.predict.
    tok = PairTokenizer(str(repo / "rr_tokenizer" / "1" / "tokenizer.json"), params.max_seq_length)
    pipe = RerankPipeline(tok, str(repo / "rr_encoder" / "1" / "model.onnx"),
                          str(repo / "rr_score" / "1" / "model.onnx"))
    pairs = [("what is up", "the sky"), ("q", "long " * 400), ("München", "東京 🚀")]
    scores, logits = pipe.predict(pairs)
    np.testing.assert_allclose(scores, cross_encoder.predict(pairs), atol=1e-4)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert len(set(np.round(scores, 4))) == 3  # the tiny model tells pairs apart


def test_the_embedding_export_refuses_a_cross_encoder(tmp_path, cross_encoder_source):
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.model_spec import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="cross-encoder"):
        export_model(cross_encoder_source, tmp_path, ExportOptions(name="x"), **QUIET)
    assert not any(tmp_path.iterdir())


def test_plain_sequence_classification_model_exports(tmp_path, hf_cross_encoder, capsys):
    assert cli.main([hf_cross_encoder, "--name", "hf", "--repository", str(tmp_path)]) == 0
    assert "max length       : 64 tokens" in capsys.readouterr().out
    assert (tmp_path / "hf_score" / "1" / "model.onnx").exists()


def test_int8_export_holds_its_bar(tmp_path, cross_encoder_source, capsys):
    args = [cross_encoder_source, "--name", "q", "--repository", str(tmp_path), "--precision", "int8"]
    assert cli.main(args) == 0
    assert f"bar for int8: {rerank.THRESHOLDS['int8']:.0e}" in capsys.readouterr().err


def test_below_the_bar_exits_non_zero_and_writes_nothing(tmp_path, cross_encoder_source, monkeypatch, capsys):
    monkeypatch.setitem(rerank.THRESHOLDS, "fp32", 1e-12)  # a bar no export can hold
    repo = tmp_path / "repo"
    assert cli.main([cross_encoder_source, "--repository", str(repo)]) == 2
    assert "not faithful" in capsys.readouterr().err
    assert not repo.exists() or not any(repo.iterdir())
    with pytest.raises(ExportError, match="nothing was written"):
        export_reranker(cross_encoder_source, repo, ExportOptions(name="x"), **QUIET)


@pytest.mark.parametrize(("activation", "expected"), [
    ("sigmoid", 1 / (1 + np.exp(-np.array([-3.0, 0.0, 2.5])))), ("identity", np.array([-3.0, 0.0, 2.5])),
    ("tanh", np.tanh(np.array([-3.0, 0.0, 2.5])))])
def test_score_step_applies_the_activation_and_keeps_the_logit(tmp_path, activation, expected):
    path = tmp_path / "score.onnx"
    path.write_bytes(build_score_step(activation).SerializeToString())
    logits = np.array([[-3.0], [0.0], [2.5]], dtype=np.float32)
    score, logit = ort.InferenceSession(str(path)).run([c.SCORE, c.LOGIT], {c.SCORE_STEP_INPUT: logits})
    np.testing.assert_allclose(score[:, 0], expected, atol=1e-6)
    np.testing.assert_array_equal(logit, logits)


@pytest.mark.parametrize(("args", "message"), [(["--precision", "fp16"], "fp16 is for the gpu target"),
                                             (["--target", "gpu", "--precision", "int8"], "int8")])
def test_precision_must_suit_the_target(tmp_path, cross_encoder_source, capsys, args, message):
    assert cli.main([cross_encoder_source, "--repository", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_gpu_fp16_and_cpu_targets(tmp_path, cross_encoder_source, capsys):
    """gpu: Triton's ONNX Runtime backend on KIND_GPU (fp16 weights, TensorRT profile); cpu: the same on CPU."""
    import onnx

    gpu = tmp_path / "gpu"
    args = [cross_encoder_source, "--name", "g", "--repository", str(gpu), "--target", "gpu", "--precision", "fp16",
            "--tensorrt", "--max-batch-size", "128"]
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    assert "bar for fp16" in printed.err
    assert "verified on      : ONNX Runtime's CPU provider in the export, not the CUDA/TensorRT engine" in printed.out
    configs = _configs(gpu, "g")
    for step in ("g_encoder", "g_score"):
        assert configs[step].platform == "onnxruntime_onnx" and configs[step].max_batch_size == 128
        assert configs[step].instance_group[0].kind == tc.mc.ModelInstanceGroup.KIND_GPU
        assert not (gpu / step / "1" / "model.py").exists()
    accel = configs["g_encoder"].optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and "input_ids:128x128" in accel.parameters["trt_profile_max_shapes"]
    assert not configs["g_encoder"].input[0].allow_ragged_batch
    weights = {t.data_type for t in onnx.load(str(gpu / "g_encoder" / "1" / "model.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights
    cpu = tmp_path / "cpu"
    assert cli.main([cross_encoder_source, "--name", "c", "--repository", str(cpu), "--target", "cpu"]) == 0
    encoder = _configs(cpu, "c")["c_encoder"]
    assert encoder.instance_group[0].kind == tc.mc.ModelInstanceGroup.KIND_CPU
    assert encoder.parameters[c.ORT_BACKEND_INTRA_OP_THREADS].string_value == "0"
