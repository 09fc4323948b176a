"""The contract round-trips: every typed parameter set, written by the exporter into a real `config.pbtxt`,
read back by every reader (Triton-side models, gateway) with the values the writer meant."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import types
from pathlib import Path

import onnx
import pytest

from triton_embeddings import contract as c
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.kinds.embedding import Artifacts, write_model
from triton_embeddings.export.model_spec import ModelSpec
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.pooler import build_pooler
from triton_embeddings.gateway.backends.triton import model_info_from_config
from triton_embeddings.triton_models.onnx_session import session_from_config
from triton_embeddings.triton_models.tokenize import TextTokenizer

HIDDEN = 8
# Every value differs from its contract default, so a reader falling back to a default is caught.
SPEC = ModelSpec(source="org/some-model", max_seq_length=100, pooling_mode="cls", normalize=False, dimension=HIDDEN,
                 lowercase=True, prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="query",
                 pad_id=3, quantization_ranges={"min": [-0.5] * HIDDEN, "max": [0.5] * HIDDEN,
                                                "prefix_norm": [0.25] * HIDDEN})
EXPECTED = {
    c.EnsembleParams: c.EnsembleParams(embedding_dimension=HIDDEN, max_seq_length=100, pooling_mode="cls",
                                       normalize=False, source_model="org/some-model",
                                       prompts={"query": "query: ", "passage": "passage: "},
                                       default_prompt_name="query", quantization_ranges=SPEC.quantization_ranges),
    c.TokenizerParams: c.TokenizerParams(max_seq_length=100, tokenizer_file="tokenizer.json", prompt="query: ",
                                         prompts={"query": "query: ", "passage": "passage: "},
                                         default_prompt_name="query", lowercase=True, pad_id=3),
}


def write_repository(tmp_path, tokenizer_json, target="embedded", **options):
    """The exporter's own writer: four models, configs rendered with text_format and parsed back."""
    pooler = tmp_path / "pooler.onnx"
    onnx.save(build_pooler("cls", False, HIDDEN), str(pooler))
    opts = ExportOptions(name="m", target=target, intra_op_threads=2, max_batch_size=16, **options)
    # The pooler's file stands in for the encoder: the readers only load it.
    write_model(tmp_path / "repo", opts, SPEC, Artifacts(pooler, pooler, tokenizer_json, True, HIDDEN))
    return tmp_path / "repo"


def read(repo, model: str) -> dict:
    """A written config.pbtxt as the readers get it: parsed, then Triton's JSON form."""
    return tc.load(repo / model / "config.pbtxt")


@pytest.fixture
def tokenizer_json(default_model_source):
    return Path(default_model_source) / "tokenizer.json"


@pytest.fixture
def repo(tmp_path, tokenizer_json):
    return write_repository(tmp_path, tokenizer_json)


@pytest.mark.parametrize(("cls", "model"), [(c.EnsembleParams, "m"), (c.TokenizerParams, "m_tokenizer")])
def test_written_parameters_read_back_equal(repo, cls, model):
    config = read(repo, model)
    assert set(c.parameters_of(config)) == set(cls.keys())  # every key written, nothing else
    expected = EXPECTED[cls]
    if cls is c.EnsembleParams:  # what the vectors depend on: the precision and the encoder file written
        encoder = repo / "m_encoder" / "1" / c.OnnxStepParams().onnx_file
        expected = dataclasses.replace(expected, precision="fp32",
                                       encoder_sha256=hashlib.sha256(encoder.read_bytes()).hexdigest())
    assert cls.from_config(config) == expected


@pytest.mark.parametrize(("model", "regroup", "threads"), [("m_encoder", True, 2), ("m_pooler", False, 1)])
def test_onnx_step_reader_agrees_with_the_writer(repo, model, regroup, threads):
    """`--intra-op-threads 2` is the encoder's; the pooler runs one thread."""
    session, params = session_from_config(read(repo, model), repo / model / "1")
    pooler = c.FUSED_POOLER_FILE if regroup else ""  # the embedded encoder pools in the step too
    assert params == c.OnnxStepParams(onnx_file="model.onnx", intra_op_threads=threads, regroup_by_length=regroup,
                                      pooler_file=pooler)
    assert session.get_session_options().intra_op_num_threads == threads
    assert [i.name for i in session.get_inputs()] == [c.TOKEN_EMBEDDINGS, c.ATTENTION_MASK]


def test_tokenizer_reader_agrees_with_the_writer(repo, tokenizer_json):
    tok = TextTokenizer.from_config(read(repo, "m_tokenizer"), repo / "m_tokenizer" / "1")
    assert (tok.max_length, tok.prompt, tok.lowercase, tok.pad_id) == (100, "query: ", True, 3)
    plain = TextTokenizer(str(tokenizer_json), 100)
    got, want = tok(["HELLO World " * 60]), plain(["query: " + "hello world " * 60])
    assert got.input_ids[0, :100].tolist() == want.input_ids[0, :100].tolist()  # prompt, lower-case, truncation
    assert got.token_count[0, 0] == 100 and got.truncated[0, 0]
    short = tok(["a"])  # [CLS] query : a [SEP], padded with pad id 3
    real = int(short.token_count[0, 0])
    assert real < short.input_ids.shape[1] and set(short.input_ids[0, real:].tolist()) == {3}


def test_gateway_reader_agrees_with_the_writer(repo):
    info = model_info_from_config(read(repo, "m"), created=0)
    want = EXPECTED[c.EnsembleParams]
    assert info is not None and info.name == "m" and info.max_batch_size == 16
    got = (info.dimension, info.max_seq_length, info.normalize, info.pooling_mode, info.source_model)
    assert got == (want.embedding_dimension, want.max_seq_length, want.normalize, want.pooling_mode,
                   want.source_model)
    assert c.is_embedding_ensemble(read(repo, "m"))
    assert model_info_from_config(read(repo, "m_tokenizer"), created=0) is None


def test_cpu_target_writes_the_onnxruntime_backend_knobs(tmp_path, tokenizer_json):
    repo = write_repository(tmp_path, tokenizer_json, target="cpu")
    for step, threads in (("m_encoder", "2"), ("m_pooler", "1")):  # the pooler: no second all-core pool
        assert c.parameters_of(read(repo, step)) == {c.ORT_BACKEND_INTRA_OP_THREADS: threads,
                                                     c.ORT_ARENA_SHRINKAGE: "cpu:0"}


def test_a_missing_required_key_is_an_error_not_a_default(repo):
    config = read(repo, "m_tokenizer")
    del config["parameters"]["max_seq_length"]
    with pytest.raises(c.ContractError, match="max_seq_length"):
        c.TokenizerParams.from_config(config)
    config["parameters"]["max_seq_length"] = {"string_value": "many"}
    with pytest.raises(c.ContractError, match="max_seq_length"):
        c.TokenizerParams.from_config(config)


def rename_key(monkeypatch, cls, field_name: str, key: str) -> None:
    """What editing `param("...")` in contract.py does: the field keeps its name, the key changes."""
    renamed = copy.copy(cls.__dataclass_fields__[field_name])
    renamed.metadata = types.MappingProxyType({**renamed.metadata, "key": key})
    monkeypatch.setitem(cls.__dataclass_fields__, field_name, renamed)


def test_renamed_parameter_keys_are_followed_by_writer_and_readers(monkeypatch, tmp_path, tokenizer_json):
    rename_key(monkeypatch, c.TokenizerParams, "max_seq_length", "max_tokens")
    rename_key(monkeypatch, c.OnnxStepParams, "intra_op_threads", "ort_threads")
    rename_key(monkeypatch, c.EnsembleParams, "pooling_mode", "pooling")
    repo = write_repository(tmp_path, tokenizer_json)
    tok_params = c.parameters_of(read(repo, "m_tokenizer"))
    assert tok_params["max_tokens"] == "100" and "max_seq_length" not in tok_params
    assert TextTokenizer.from_config(read(repo, "m_tokenizer"), repo / "m_tokenizer" / "1").max_length == 100
    enc = read(repo, "m_encoder")
    assert "ort_threads" in c.parameters_of(enc) and "intra_op_threads" not in c.parameters_of(enc)
    assert session_from_config(enc, repo / "m_encoder" / "1")[0].get_session_options().intra_op_num_threads == 2
    ens = read(repo, "m")
    assert "pooling" in c.parameters_of(ens) and c.EnsembleParams.from_config(ens).pooling_mode == "cls"
    assert model_info_from_config(ens, created=0).pooling_mode == "cls"


def test_renamed_tensor_is_followed_by_the_written_configs(monkeypatch, tmp_path, tokenizer_json):
    monkeypatch.setattr(c, "TEXT", "TEXT_IN")
    monkeypatch.setattr(c, "EMBEDDING", "VECTOR")
    repo = write_repository(tmp_path, tokenizer_json)
    ensemble, tokenizer = read(repo, "m"), read(repo, "m_tokenizer")
    inputs = ["TEXT_IN", c.PROMPT_NAME, c.TRUNCATE]
    assert [i["name"] for i in ensemble["input"]] == inputs == [i["name"] for i in tokenizer["input"]]
    assert ensemble["output"][0]["name"] == "VECTOR" == read(repo, "m_pooler")["output"][0]["name"]
    steps = ensemble["ensemble_scheduling"]["step"]
    assert steps[0]["input_map"] == {n: n for n in inputs} and steps[2]["output_map"] == {"VECTOR": "VECTOR"}
    assert c.is_embedding_ensemble(ensemble)
