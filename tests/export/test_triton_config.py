"""Generated Triton configs: golden files, parse-back, and no drift from the committed repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEFAULT_MODEL
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.kinds.embedding import configs
from triton_embeddings.export.model_spec import ModelSpec
from triton_embeddings.export.options import ExportOptions

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
SPEC = ModelSpec(source="sentence-transformers/all-MiniLM-L6-v2", max_seq_length=256, pooling_mode="mean",
                 normalize=True, dimension=384, prompts={"query": "query: "}, default_prompt_name=None)
SHA = "0123456789abcdef" * 4  # the encoder file's sha256, as write_model computes it
CASES = {
    "gpu-tensorrt": ExportOptions(name="minilm", target="gpu", precision="fp16", tensorrt=True, max_batch_size=128),
    "cpu": ExportOptions(name="minilm", target="cpu", intra_op_threads=4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_configs_match_golden_files(case):
    rendered = {name: tc.render(cfg) for name, cfg in configs(CASES[case], SPEC, True, 384, SHA).items()}
    folder = GOLDEN / case
    if os.environ.get("UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (folder / f"{name}.pbtxt").write_text(text)
    assert sorted(p.stem for p in folder.glob("*.pbtxt")) == sorted(rendered)
    for name, text in rendered.items():
        assert (folder / f"{name}.pbtxt").read_text() == text, f"{case}/{name} drifted; UPDATE_GOLDEN=1 to accept"


def test_gpu_production_settings():
    cfg = configs(CASES["gpu-tensorrt"], SPEC, True, 384, SHA)
    encoder = cfg["minilm_encoder"]
    assert encoder.platform == "onnxruntime_onnx"
    assert encoder.instance_group[0].kind == tc.mc.ModelInstanceGroup.KIND_GPU
    assert encoder.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert len(encoder.model_warmup) >= 1
    trt = encoder.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_profile_max_shapes"].startswith("input_ids:128x256")
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    assert trt.parameters["trt_engine_cache_path"] == "/tmp/trt_cache/minilm-0123456789abcdef"
    assert trt.parameters["trt_timing_cache_path"] == "/tmp/trt_cache/minilm"
    assert cfg["minilm_tokenizer"].backend == "python"
    assert cfg["minilm"].platform == "ensemble"


def test_every_committed_config_parses_into_model_config():
    for path in (ROOT / "model_repository").glob("*/config.pbtxt"):
        config = tc.parse(path.read_text())
        assert config.name == path.parent.name


def _measured_apart(text: str) -> tuple[str, dict]:
    """A config without its calibrated int8 ranges (measured, so equal only to float precision), and them."""
    config = tc.parse(text)
    if "quantization_ranges" not in config.parameters:
        return tc.render(config), {}
    raw = config.parameters["quantization_ranges"].string_value
    del config.parameters["quantization_ranges"]
    return tc.render(config), json.loads(raw)


def test_committed_repository_has_not_drifted(model_repository):
    """The session fixture re-exports the default model; configs and model.py must equal what git holds."""
    committed = ROOT / "model_repository"
    names = [DEFAULT_MODEL, f"{DEFAULT_MODEL}_tokenizer", f"{DEFAULT_MODEL}_encoder", f"{DEFAULT_MODEL}_pooler"]
    for name in names:
        for rel in ("config.pbtxt", "1/model.py"):
            fresh = model_repository / name / rel
            if not fresh.exists():
                continue
            if rel == "1/model.py":
                assert (committed / name / rel).read_text() == fresh.read_text(), f"{name}/{rel} drifted"
                continue
            old, old_ranges = _measured_apart((committed / name / rel).read_text())
            new, new_ranges = _measured_apart(fresh.read_text())
            assert old == new, f"{name}/{rel} drifted"
            assert old_ranges.keys() == new_ranges.keys()
            for key in old_ranges:
                assert np.allclose(old_ranges[key], new_ranges[key], rtol=1e-3, atol=1e-5), f"{name}: {key} drifted"
    tracked = {p.relative_to(committed).as_posix() for p in committed.rglob("*")
               if p.is_file() and p.suffix in (".pbtxt", ".py")}
    regenerated = {p.relative_to(model_repository).as_posix() for p in model_repository.rglob("*")
                   if p.is_file() and p.suffix in (".pbtxt", ".py")}
    assert tracked == regenerated


def test_embedded_encoder_runs_two_instances_and_no_step_waits_by_default():
    cfg = configs(ExportOptions(name="minilm"), SPEC, True, 384)
    encoder, pooler, tokenizer = cfg["minilm_encoder"], cfg["minilm_pooler"], cfg["minilm_tokenizer"]
    assert encoder.instance_group[0].count == 2 and pooler.instance_group[0].count == 1
    for step in (encoder, pooler, tokenizer):
        assert step.dynamic_batching.max_queue_delay_microseconds == 0
    assert pooler.parameters["intra_op_threads"].string_value == "1"
    assert encoder.parameters["intra_op_threads"].string_value == "0"  # shared out between the instances
    tuned = configs(ExportOptions(name="minilm", encoder_instances=3, max_queue_delay_us=500, instances=2),
                    SPEC, True, 384)
    assert tuned["minilm_encoder"].instance_group[0].count == 3
    assert tuned["minilm_encoder"].dynamic_batching.max_queue_delay_microseconds == 500
    assert tuned["minilm_tokenizer"].dynamic_batching.max_queue_delay_microseconds == 0
    gpu = configs(ExportOptions(name="minilm", target="gpu"), SPEC, True, 384)
    assert gpu["minilm_encoder"].instance_group[0].count == 1


@pytest.mark.parametrize("threads", [0, 4])
def test_cpu_pooler_runs_one_thread_whatever_the_encoder_takes(threads):
    """Both steps run in Triton's process: ORT's 0 would size a second pool, the pooler's, to every core."""
    cfg = configs(ExportOptions(name="minilm", target="cpu", intra_op_threads=threads), SPEC, True, 384)
    knob = tc.c.ORT_BACKEND_INTRA_OP_THREADS
    assert cfg["minilm_encoder"].parameters[knob].string_value == str(threads)
    assert cfg["minilm_pooler"].parameters[knob].string_value == "1"


def _encoder_file(path: Path, weight: float) -> Path:
    """A one-node ONNX graph whose only weight is `weight`: two files, the same graph, other weights."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["input_ids", "w"], ["last_hidden_state"])], "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [None])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1], [weight])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def _engine_folder(repo: Path, name: str) -> str:
    config = tc.parse((repo / name / "config.pbtxt").read_text())
    return config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["trt_engine_cache_path"]


def test_tensorrt_engines_are_kept_per_encoder_file_not_per_name(tmp_path):
    """ONNX Runtime's engine id covers the graph, not its weights: a re-export under the same name with other
    weights must not find the old engine, while the same weights find their own again."""
    from triton_embeddings.export.kinds.base import file_sha256
    from triton_embeddings.export.kinds.embedding import Artifacts, write_model

    opts, repo = ExportOptions(name="m", target="gpu", precision="fp16", tensorrt=True), tmp_path / "repo"
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    folders = []
    for i, weight in enumerate((1.0, 2.0, 1.0)):  # export, re-export with other weights, back to the first
        encoder = _encoder_file(tmp_path / f"encoder{i}.onnx", weight)
        write_model(repo, opts, SPEC, Artifacts(encoder, encoder, tokenizer, False, 384))
        folders.append(_engine_folder(repo, "m_encoder"))
        assert folders[-1] == f"/tmp/trt_cache/m-{file_sha256(encoder)[:16]}"
    assert folders[0] != folders[1] and folders[0] == folders[2]
    ensemble = tc.parse((repo / "m" / "config.pbtxt").read_text())
    assert folders[2].endswith(ensemble.parameters["encoder_sha256"].string_value[:16])  # what the gateway keys on


def test_tensorrt_needs_the_encoder_files_sha256():
    with pytest.raises(ValueError, match="sha256"):
        configs(CASES["gpu-tensorrt"], SPEC, True, 384)
