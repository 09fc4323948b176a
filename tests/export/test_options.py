"""ExportOptions: one default per option, every cross-field rule, and the CLI generated from it."""

from __future__ import annotations

import dataclasses

import pytest

from triton_embeddings.export import cli
from triton_embeddings.export.options import TARGETS, ExportOptions, OptionsError, from_arguments


def parse(*argv: str) -> ExportOptions:
    args = cli.build_parser().parse_args(["some/model", *argv])
    return from_arguments(args, name=args.name or cli.default_name(args.model))


def test_the_cli_defaults_are_the_dataclass_defaults():
    assert parse() == ExportOptions(name="model")
    flags = {a.dest for a in cli.build_parser()._actions}
    assert {f.name for f in dataclasses.fields(ExportOptions)} <= flags  # every option is on the CLI


def test_cli_values_reach_the_options():
    opts = parse("--target", "gpu", "--precision", "fp16", "--tensorrt", "--max-batch-size", "128",
                 "--max-seq-length", "200", "--queue-timeout-us", "5", "--name", "x", "--source-label", "hub/x")
    assert (opts.target, opts.precision, opts.tensorrt, opts.max_batch_size) == (TARGETS["gpu"], "fp16", True, 128)
    assert (opts.max_seq_length, opts.queue_timeout_us, opts.name, opts.source_label) == (200, 5, "x", "hub/x")


@pytest.mark.parametrize(("precision", "fp16"), [("fp32", False), ("fp16", True)])
def test_tensorrt_precision_follows_the_export_precision(precision, fp16):
    assert ExportOptions(name="m", target="gpu", precision=precision, tensorrt=True).tensorrt_fp16 is fp16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "tpu"}, "target must be one of"),
        ({"precision": "fp16"}, "fp16 is for the gpu target"),
        ({"target": "cpu", "precision": "fp16"}, "fp16 is for the gpu target"),
        ({"target": "gpu", "precision": "int8"}, "int8"),
        ({"precision": "bf16"}, "precision must be one of"),
        ({"target": "cpu", "tensorrt": True}, "TensorRT needs the gpu target"),
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"instances": 0}, "instances must be at least 1"),
        ({"max_seq_length": 0}, "max_seq_length must be at least 1"),
        ({"name": ""}, "needs a name"),
    ],
)
def test_contradicting_options_are_refused(kwargs, message):
    with pytest.raises(OptionsError, match=message):
        ExportOptions(**{"name": "m", **kwargs})


def test_targets_say_how_they_serve():
    gpu, cpu, embedded = TARGETS["gpu"], TARGETS["cpu"], TARGETS["embedded"]
    assert (gpu.instance_kind, cpu.instance_kind, embedded.instance_kind) == ("KIND_GPU", "KIND_CPU", "KIND_CPU")
    assert [t.python_onnx_steps for t in (gpu, cpu, embedded)] == [False, False, True]
    assert [t.ragged for t in (gpu, cpu, embedded)] == [False, False, True]
    assert [t.ort_backend_threads for t in (gpu, cpu, embedded)] == [False, True, False]
    assert ExportOptions(name="m").steps == ("m_tokenizer", "m_encoder", "m_pooler")
