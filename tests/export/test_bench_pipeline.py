"""The benchmark's raw baseline is the served pipeline: it reads the written configs through the contract."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np

from tests.conftest import DEFAULT_MODEL
from triton_embeddings import contract
from triton_embeddings.export import triton_config as tc

TOKENIZER, ENCODER, POOLER = contract.step_names(DEFAULT_MODEL)


def test_raw_pipeline_follows_the_written_tokenizer_config(model_repository, tmp_path, st_model):
    from bench import bench_triton

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    texts = ["what is triton", "Dynamic batching needs equal shapes"]
    plain = bench_triton.raw_pipeline(repo, threads=1)
    assert np.allclose(plain.embed(texts), st_model.encode(texts), atol=1e-4)

    path = repo / TOKENIZER / "config.pbtxt"
    config = tc.parse(path.read_text())
    params = contract.TokenizerParams.from_config(tc.as_json(config))
    changed = dataclasses.replace(params, prompt="query: ", pad_id=7, max_seq_length=9)
    for key, value in changed.to_parameters().items():
        config.parameters[key].string_value = value
    path.write_text(tc.render(config))
    tok = bench_triton.raw_pipeline(repo, threads=1).tokenizer
    assert (tok.prompt, tok.pad_id, tok.max_length, tok.lowercase) == ("query: ", 7, 9, params.lowercase)
    assert tok(["a"]).token_count[0, 0] == plain.tokenizer(["a"]).token_count[0, 0] + 2


def test_bench_thread_override_goes_through_the_contract(model_repository, tmp_path):
    from bench import bench_triton

    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    bench_triton.set_threads(repo, 3)
    for step, regroup in ((ENCODER, True), (POOLER, False)):
        params = contract.OnnxStepParams.from_config(tc.load(repo / step / "config.pbtxt"))
        assert params == contract.OnnxStepParams(intra_op_threads=3, regroup_by_length=regroup)
