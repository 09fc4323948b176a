"""The GPU engine (triton_models/gpu_engine.py) through its CPU fallback: the same code, fp32 on the CPU.

Its pooling against the ONNX pooler, its hidden states and pooled vectors against the exported model.onnx and
pooler.onnx, the engine choice a config and the host make, and the export's GPU check (fp32 here).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import served
from triton_embeddings import contract as c
from triton_embeddings.defaults import DEFAULT_MODEL
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.pooler import POOLERS, build_pooler
from triton_embeddings.triton_models import gpu_engine
from triton_embeddings.triton_models.torch_pooling import pool

ENCODER = f"{DEFAULT_MODEL}{c.ENCODER_SUFFIX}"


def _ragged(rng, n=4, length=7, hidden=16):
    emb = rng.normal(size=(n, length, hidden)).astype(np.float32)
    mask = np.zeros((n, length), dtype=np.int64)
    for i, k in enumerate([7, 3, 1, 5][:n]):
        mask[i, :k] = 1
    emb[mask == 0] = 1e3  # padding garbage must not leak into the result
    return emb, mask


@pytest.mark.parametrize("mode", sorted(POOLERS))
@pytest.mark.parametrize("normalize", [True, False])
def test_torch_pooling_matches_the_onnx_pooler(mode, normalize):
    emb, mask = _ragged(np.random.default_rng(2))
    session = ort.InferenceSession(build_pooler(mode, normalize, emb.shape[-1]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {c.TOKEN_EMBEDDINGS: emb, c.ATTENTION_MASK: mask})
    got = pool(torch.from_numpy(emb).half().float(), torch.from_numpy(mask), mode, normalize)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-3, atol=2e-3)  # emb rounded through fp16 as on a GPU


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="weightedmean"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "weightedmean", True)


@pytest.fixture(scope="module")
def encoder_folder(model_repository):
    return model_repository / ENCODER / "1"


@pytest.fixture(scope="module")
def engine(encoder_folder):
    return gpu_engine.TorchEncoder(encoder_folder / c.TORCH_WEIGHTS, device="cpu")


def _feed(default_model_source, texts):
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(default_model_source)(texts, padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


TEXTS = ["hello", "The quick brown fox jumps over the lazy dog, twice, and then once more.", "東京"]


def test_the_export_writes_the_weights_of_model_onnx(encoder_folder, engine, default_model_source):
    """The embedded fp32 encoder's folder holds the transformer's HF weights; they compute what model.onnx does."""
    assert {p.name for p in (encoder_folder / c.TORCH_WEIGHTS).iterdir()} >= {"config.json", "model.safetensors"}
    feed = _feed(default_model_source, TEXTS)
    session = ort.InferenceSession(str(encoder_folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (want,) = session.run([c.ENCODER_OUTPUT], feed)
    (got,) = engine.run([c.ENCODER_OUTPUT], feed)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-4)
    with pytest.raises(KeyError):
        engine.run([c.EMBEDDING], feed)


def test_pooled_vectors_equal_the_served_pooler(model_repository, engine, default_model_source):
    feed = _feed(default_model_source, TEXTS)
    params = c.EnsembleParams.from_config(tc.load(model_repository / DEFAULT_MODEL / "config.pbtxt"))
    pooler = ort.InferenceSession(str(model_repository / f"{DEFAULT_MODEL}{c.POOLER_SUFFIX}" / "1" / "model.onnx"),
                                  providers=["CPUExecutionProvider"])
    (want,) = pooler.run(None, {c.TOKEN_EMBEDDINGS: engine.hidden(feed), c.ATTENTION_MASK: feed["attention_mask"]})
    got = engine.pooled(feed, params.pooling_mode, params.normalize)
    assert got.shape == (len(TEXTS), params.embedding_dimension) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def _config_with(model_repository, engine: str) -> dict:
    config = tc.load(model_repository / ENCODER / "config.pbtxt")
    assert c.OnnxStepParams.from_config(config).engine == "auto"  # what the export writes
    config["parameters"]["engine"] = {"string_value": engine}
    return config


def test_the_engine_the_config_and_the_host_choose(model_repository, encoder_folder):
    runner, _ = gpu_engine.engine_or_session(_config_with(model_repository, "onnxruntime"), encoder_folder)
    assert isinstance(runner, ort.InferenceSession)
    runner, params = gpu_engine.engine_or_session(_config_with(model_repository, "torch"), encoder_folder)
    assert isinstance(runner, gpu_engine.TorchEncoder) and params.regroup_by_length
    # auto: the GPU engine exactly when this host has a CUDA device (never on a CPU-only host)
    runner, _ = gpu_engine.engine_or_session(_config_with(model_repository, "auto"), encoder_folder)
    assert isinstance(runner, gpu_engine.TorchEncoder) == gpu_engine.cuda_present()
    with pytest.raises(ValueError, match="tensorrt"):
        gpu_engine.engine_for(_config_with(model_repository, "tensorrt"), encoder_folder)


def test_auto_without_weights_is_onnx_runtime(model_repository):
    """The pooler (and an int8 encoder) has no weights folder: ONNX Runtime whatever the host."""
    folder = model_repository / f"{DEFAULT_MODEL}{c.POOLER_SUFFIX}" / "1"
    config = tc.load(folder.parent / "config.pbtxt")
    assert not (folder / c.TORCH_WEIGHTS).exists()
    assert gpu_engine.engine_for(config, folder) is None


def test_the_int8_export_writes_no_weights(int8_repository):
    assert not (int8_repository.repo / f"q{c.ENCODER_SUFFIX}" / "1" / c.TORCH_WEIGHTS).exists()


def test_the_gpu_check_passes_in_fp32_on_the_cpu(st_model, encoder_folder, model_repository):
    """The export's GPU check (fp16 on a GPU host), run here on the CPU in fp32 against its bar (0.9999)."""
    from triton_embeddings.export.kinds import embedding
    from triton_embeddings.export.model_spec import read_spec
    from triton_embeddings.triton_models.tokenize import TextTokenizer

    spec = read_spec(st_model, "minilm", None)
    tokenizer = TextTokenizer.from_config(tc.load(model_repository / f"{DEFAULT_MODEL}{c.TOKENIZER_SUFFIX}" /
                                                  "config.pbtxt"),
                                          model_repository / f"{DEFAULT_MODEL}{c.TOKENIZER_SUFFIX}" / "1")
    check = embedding.torch_verification(st_model, spec, tokenizer, encoder_folder / c.TORCH_WEIGHTS, device="cpu")
    assert check.precision == "fp32" and check.passed, check.table()
    assert check.min_cosine >= 0.9999


def test_the_gpu_engine_pools_on_the_device_when_the_encoder_names_its_pooling(model_repository, encoder_folder):
    """The fused pooler's mode in the encoder's config (FusedPoolerParams) lets the torch engine pool where it
    ran; ONNX Runtime, or an export from before the mode was written, pools with pooler.onnx on the CPU."""
    ensemble = c.EnsembleParams.from_config(tc.load(model_repository / DEFAULT_MODEL / "config.pbtxt"))
    config = _config_with(model_repository, "torch")
    torch_runner, _ = gpu_engine.engine_or_session(config, encoder_folder)
    assert gpu_engine.device_pooling(torch_runner, config) == (ensemble.pooling_mode, ensemble.normalize)
    ort_runner, _ = gpu_engine.engine_or_session(_config_with(model_repository, "onnxruntime"), encoder_folder)
    assert gpu_engine.device_pooling(ort_runner, config) is None
    del config["parameters"]["pooling_mode"]
    assert gpu_engine.device_pooling(torch_runner, config) is None


def test_pooled_and_hidden_come_from_one_pass(engine, default_model_source):
    feed = _feed(default_model_source, TEXTS)
    pooled, hidden = engine.pooled_and_hidden(feed, "mean", True, hidden=True)
    np.testing.assert_allclose(hidden, engine.hidden(feed), atol=1e-6)
    np.testing.assert_allclose(pooled, engine.pooled(feed, "mean", True), atol=1e-6)
    assert engine.pooled_and_hidden(feed, "mean", True, hidden=False)[1] is None


def _torch_repository(model_repository: Path, into: Path) -> Path:
    """A copy of the default model's repository whose encoder runs the torch engine and has no pooler.onnx."""
    for folder in model_repository.iterdir():
        shutil.copytree(folder, into / folder.name, symlinks=False,
                        ignore=shutil.ignore_patterns(c.FUSED_POOLER_FILE) if folder.name == ENCODER else None)
    config = into / ENCODER / "config.pbtxt"
    text = config.read_text()
    engine_auto = 'key: "engine"\n  value {\n    string_value: "auto"'
    assert engine_auto in text
    config.write_text(text.replace(engine_auto, engine_auto.replace('"auto"', '"torch"')))
    return into


def test_the_served_step_pools_on_the_device_without_pooler_onnx(model_repository, triton, tmp_path_factory):
    """Served by the real Triton with engine torch (its CPU fallback) and no pooler.onnx beside the encoder: the
    direct path's EMBEDDING (token ids in, [N, D] out) equals the ensemble's vectors from the ONNX steps."""
    from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput

    from triton_embeddings.gateway.backends.direct import route_from_configs

    repo = _torch_repository(model_repository, tmp_path_factory.mktemp("torch_repository"))
    steps = (DEFAULT_MODEL, ENCODER, f"{DEFAULT_MODEL}{c.TOKENIZER_SUFFIX}")
    route = route_from_configs(repo, *(tc.load(repo / name / "config.pbtxt") for name in steps))
    texts = [*TEXTS, "a longer text " * 20]
    with served(repo, tmp_path_factory, "torch_triton") as server:
        client = InferenceServerClient(server.grpc_url)
        res = client.infer(route.encoder, route.infer_inputs(route.encode(texts)),
                           outputs=[InferRequestedOutput(c.EMBEDDING)])
        got = res.as_numpy(c.EMBEDDING)
    reference = InferenceServerClient(triton.grpc_url)
    column = InferInput(c.TEXT, [len(texts), 1], "BYTES")
    column.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    want = reference.infer(DEFAULT_MODEL, [column], outputs=[InferRequestedOutput(c.EMBEDDING)]).as_numpy(c.EMBEDDING)
    assert got.shape == want.shape
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.99999
