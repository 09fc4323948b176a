"""The export CLI: faithful or nothing, several models per repository, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient

from triton_embeddings.export import cli
from triton_embeddings.export.exporter import ExportError, export_model
from triton_embeddings.export.kinds import embedding
from triton_embeddings.export.model_spec import UnsupportedModelError
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.local.launcher import TritonServer

try:
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
except ImportError:  # pragma: no cover
    from sentence_transformers.models import Dense, Pooling, Transformer

from tests.triton_models.test_triton_server import embed


def _tiny_bert(folder: Path, tokenizer_source: str) -> Path:
    """A randomly initialised 2-layer BERT with the MiniLM vocabulary."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory, default_model_source) -> str:
    """A small random BERT saved as a sentence-transformers model with CLS pooling, no normalization."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("tiny-bert")
    transformer = Transformer(str(_tiny_bert(base / "hf", default_model_source)), max_seq_length=96)
    model = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="cls")], device="cpu")
    out = base / "tiny-cls"
    model.save(str(out))
    return str(out)


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory, default_model_source) -> str:
    from sentence_transformers import SentenceTransformer

    base = tmp_path_factory.mktemp("tiny-dense")
    transformer = Transformer(str(_tiny_bert(base / "hf", default_model_source)))
    modules = [transformer, Pooling(32, pooling_mode="mean"), Dense(32, 8)]
    out = base / "tiny-dense"
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return str(out)


def test_two_models_in_one_repository_both_serve(tmp_path, default_model_source, cls_model, st_model, capsys):
    from sentence_transformers import SentenceTransformer

    repo = tmp_path / "repo"
    assert cli.main([default_model_source, "--name", "minilm", "--repository", str(repo)]) == 0
    assert cli.main([cls_model, "--name", "tiny-cls", "--repository", str(repo), "--max-batch-size", "8"]) == 0
    summary = capsys.readouterr().out
    assert "output dimension : 32" in summary and "pooling          : cls" in summary
    assert str(repo.resolve()) in summary

    texts = ["hello world", "a longer sentence about dynamic batching in Triton " * 20]
    with TritonServer.on_free_ports(repo) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            got_minilm, _ = embed(client, "minilm", texts)
            got_cls, tokens = embed(client, "tiny-cls", texts)
    assert embedding.cosine(got_minilm, st_model.encode(texts)).min() >= 0.9999
    reference = SentenceTransformer(cls_model, device="cpu").encode(texts)
    assert got_cls.shape == (2, 32)
    assert embedding.cosine(got_cls, reference).min() >= 0.9999
    assert not np.allclose(np.linalg.norm(got_cls, axis=1), 1.0)  # CLS model does not normalize
    assert tokens[1] == 96  # its own max_seq_length


def test_int8_export_holds_the_bar(int8_repository):
    err = int8_repository.log
    assert "PASS: min cosine" in err
    floor = float(err.split("PASS: min cosine ")[1].split()[0])
    assert floor >= embedding.THRESHOLDS["int8"]
    assert "int8 plan: smoothed, outliers split, per-channel, all MatMul" in err  # no whole MatMul left fp32
    graph = onnx.load(str(int8_repository.repo / "q_encoder" / "1" / "model.onnx")).graph
    weights = {t.name for t in graph.initializer}
    fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(fp32) == 6 and all(name.endswith("_outliers") for name in fp32)  # 4 channels per down-projection


@pytest.mark.slow
def test_int8_served_by_triton_holds_the_bar_on_texts_it_was_not_chosen_on(int8_repository, st_model):
    """The int8 plan is chosen on `selection_texts`; served by the real Triton (tokenizer step included)
    it must hold the int8 bar on the held-out verification texts and on fresh ones."""
    assert "chosen on other texts" in int8_repository.log
    fresh = ["Can I get a refund for a cancelled flight?", "Die Katze schläft auf dem Sofa.",
             "Rust's borrow checker prevents data races at compile time.", "🙂", "1234 5678",
             "An embedding service should answer quickly even when many clients call it at once. " * 6]
    held_out = [t for group in embedding.verification_texts().values() for t in group]
    assert not set(held_out) & {t for g in embedding.selection_texts().values() for t in g}
    texts = held_out + fresh
    with TritonServer.on_free_ports(int8_repository.repo) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            got, _ = embed(client, "q", texts)
    cos = embedding.cosine(got, st_model.encode(texts))
    worst = int(cos.argmin())
    assert cos.min() >= embedding.THRESHOLDS["int8"], f"min cosine {cos.min():.4f} on {texts[worst]!r}"


def test_unfaithful_export_writes_nothing(tmp_path, default_model_source, monkeypatch):
    monkeypatch.setitem(embedding.THRESHOLDS, "int8", 0.99999)  # a bar no int8 plan can hold
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="not faithful"):
        export_model(default_model_source, repo, ExportOptions(name="q", precision="int8"), log=lambda _: None)
    assert not repo.exists() or not any(repo.iterdir())


def test_cli_exits_non_zero_when_verification_fails(tmp_path, default_model_source, monkeypatch, capsys):
    monkeypatch.setitem(embedding.THRESHOLDS, "fp32", 1.1)
    repo = tmp_path / "repo"
    assert cli.main([default_model_source, "--repository", str(repo)]) == 2
    assert "not faithful" in capsys.readouterr().err
    assert not repo.exists() or not any(repo.iterdir())


def test_unsupported_module_stack_is_refused(tmp_path, dense_model, capsys):
    with pytest.raises(UnsupportedModelError, match="Dense"):
        export_model(dense_model, tmp_path / "r", ExportOptions(name="d"), log=lambda _: None)
    assert cli.main([dense_model, "--repository", str(tmp_path / "r")]) == 2
    assert "Dense" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "fp16"], "fp16 is for the gpu target"),
        (["--target", "gpu", "--precision", "int8"], "int8"),
        (["--tensorrt"], "TensorRT needs the gpu target"),
        (["--max-seq-length", "100000"], "position embeddings"),
    ],
)
def test_bad_options_are_refused(tmp_path, default_model_source, capsys, args, message):
    assert cli.main([default_model_source, "--repository", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err


def test_default_name_comes_from_the_hub_id():
    assert cli.default_name("sentence-transformers/all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    assert cli.default_name("/models/my-model/") == "my-model"


def test_gpu_fp16_export(fp16_repository):
    from triton_embeddings.export import triton_config as tc

    repo = fp16_repository.repo
    assert "PASS" in fp16_repository.log
    encoder = tc.parse((repo / "m_encoder" / "config.pbtxt").read_text())
    assert encoder.platform == "onnxruntime_onnx" and encoder.max_batch_size == 128
    assert encoder.instance_group[0].kind == tc.mc.ModelInstanceGroup.KIND_GPU
    assert not (repo / "m_encoder" / "1" / "model.py").exists()  # the ONNX Runtime backend runs model.onnx
    import onnx

    types = {t.data_type for t in onnx.load(str(repo / "m_encoder" / "1" / "model.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    assert GPU_VERIFIED_ON in fp16_repository.log  # the summary says where the fp16 check ran


# The package installs onnxruntime's CPU build: the export's check never runs on what Triton serves on a GPU.
GPU_VERIFIED_ON = (f"  {'verified on':<17}: ONNX Runtime's CPU provider in the export, not the CUDA/TensorRT engine "
                   "Triton serves on the GPU")


@pytest.mark.parametrize(("target", "precision", "said"), [("gpu", "fp16", True), ("gpu", "fp32", True),
                                                           ("cpu", "fp32", False), ("embedded", "int8", False)])
def test_summary_says_where_the_gpu_target_was_verified(tmp_path, target, precision, said):
    from triton_embeddings.export.exporter import ExportResult
    from triton_embeddings.export.model_spec import ModelSpec

    spec = ModelSpec(source="org/m", max_seq_length=128, pooling_mode="mean", normalize=True, dimension=32,
                     prompts={}, default_prompt_name=None)
    check = embedding.Verification(precision, embedding.THRESHOLDS[precision], [("short", 3, 0.99995, 0.99998)])
    options = ExportOptions(name="m", target=target, precision=precision)
    summary = ExportResult(spec, options, check, [], tmp_path).summary()
    assert (GPU_VERIFIED_ON in summary.splitlines()) is said
