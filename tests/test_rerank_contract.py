"""The rerank contract round-trips: RerankParams and PairTokenizerParams written by the rerank writer into real
`config.pbtxt` files, read back by every reader (the pair tokenizer step, the ONNX steps, the gateway)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from triton_embeddings import contract as c
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.cross_encoder import RerankSpec, build_score_step
from triton_embeddings.export.kinds.base import file_sha256
from triton_embeddings.export.kinds.rerank import write_rerank_model
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.rerank_exporter import RerankArtifacts
from triton_embeddings.gateway.backends.base import RerankModelInfo
from triton_embeddings.gateway.backends.triton import model_info_from_config
from triton_embeddings.triton_models.onnx_session import session_from_config
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer

# Every value differs from its contract default, so a reader falling back to a default is caught.
SPEC = RerankSpec(source="org/some-reranker", max_seq_length=100, activation="tanh", pad_id=3,
                  truncation="only_second")


@pytest.fixture
def repo(tmp_path, default_model_source) -> Path:
    score = tmp_path / "score.onnx"
    onnx.save(build_score_step("tanh"), str(score))
    opts = ExportOptions(name="r", intra_op_threads=2, max_batch_size=16)
    # The score step's file stands in for the classifier: the readers only load it.
    art = RerankArtifacts(score, score, Path(default_model_source) / "tokenizer.json", True)
    write_rerank_model(tmp_path / "repo", opts, SPEC, art)
    return tmp_path / "repo"


def read(repo, model: str) -> dict:
    return tc.load(repo / model / "config.pbtxt")


def test_written_parameters_read_back_equal(repo):
    ensemble = read(repo, "r")
    want = c.RerankParams(kind="rerank", max_seq_length=100, activation="tanh", truncation="only_second",
                          source_model="org/some-reranker", precision="fp32",
                          classifier_sha256=file_sha256(repo / "r_encoder" / "1" / "model.onnx"))
    assert c.RerankParams.from_config(ensemble) == want and len(want.classifier_sha256) == 64
    assert c.is_rerank_ensemble(ensemble) and not c.is_embedding_ensemble(ensemble)
    params = c.PairTokenizerParams.from_config(read(repo, "r_tokenizer"))
    assert params == c.PairTokenizerParams(max_seq_length=100, truncation="only_second", pad_id=3)
    tokenizer = PairTokenizer.from_config(read(repo, "r_tokenizer"), repo / "r_tokenizer" / "1")
    assert tokenizer.truncation == "only_second" and tokenizer.pairs(["q"], ["d"]).input_ids[0, -1] == 3


def test_onnx_steps_and_gateway_read_what_was_written(repo):
    for step, regroup, threads in (("r_encoder", True, 2), ("r_score", False, 1)):
        _, params = session_from_config(read(repo, step), repo / step / "1")
        assert params == c.OnnxStepParams(intra_op_threads=threads, regroup_by_length=regroup)
    info = model_info_from_config(read(repo, "r"), created=0)
    assert isinstance(info, RerankModelInfo) and info.kind == "rerank"
    assert (info.max_seq_length, info.max_batch_size, info.activation, info.source_model) == (
        100, 16, "tanh", "org/some-reranker")
    assert model_info_from_config(read(repo, "r_tokenizer"), created=0) is None


def test_renamed_tensors_are_followed_by_the_written_configs(monkeypatch, tmp_path, default_model_source):
    monkeypatch.setattr(c, "QUERY", "Q")
    monkeypatch.setattr(c, "SCORE", "RELEVANCE")
    score = tmp_path / "score.onnx"
    onnx.save(build_score_step("sigmoid"), str(score))
    art = RerankArtifacts(score, score, Path(default_model_source) / "tokenizer.json", False)
    write_rerank_model(tmp_path / "repo", ExportOptions(name="r"), SPEC, art)
    ensemble = read(tmp_path / "repo", "r")
    assert [i["name"] for i in ensemble["input"]] == ["Q", c.DOCUMENT]
    assert [i["name"] for i in read(tmp_path / "repo", "r_tokenizer")["input"]] == ["Q", c.DOCUMENT]
    assert ensemble["output"][0]["name"] == "RELEVANCE" == read(tmp_path / "repo", "r_score")["output"][0]["name"]
    assert c.is_rerank_ensemble(ensemble)
