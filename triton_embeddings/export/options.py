"""Every export option in one place: its default, its help, and the rules between options.

`embeddings-export`'s arguments are generated from these fields (`add_arguments`), so a default is
written once, here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from triton_embeddings import contract

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Target:
    """Where a repository is served: what differs between the gpu, cpu and embedded targets."""

    name: str
    gpu: bool  # encoder and pooler instances on the GPU
    python_onnx_steps: bool  # encoder and pooler run model.onnx on the Python backend (no ORT backend)
    precisions: tuple[str, ...]
    help: str

    @property
    def ragged(self) -> bool:
        """Python-backend ONNX steps take ragged batches and regroup rows by length themselves."""
        return self.python_onnx_steps

    @property
    def instance_kind(self) -> str:
        return "KIND_GPU" if self.gpu else "KIND_CPU"

    @property
    def default_encoder_instances(self) -> int:
        """Python-backend encoders: 2 instances, the cores shared out between them (two batches side by
        side); the ORT backend runs in Triton's own process: `--instances`."""
        return 2 if self.python_onnx_steps else 0

    @property
    def ort_backend_threads(self) -> bool:
        """Triton's onnxruntime backend on CPU takes a thread count."""
        return not self.gpu and not self.python_onnx_steps

    def __str__(self) -> str:
        return self.name


TARGETS = {t.name: t for t in (
    Target("gpu", True, False, ("fp32", "fp16"), "ONNX Runtime backend on GPU (production)"),
    Target("cpu", False, False, ("fp32", "int8"), "ONNX Runtime backend on CPU"),
    Target("embedded", False, True, ("fp32", "int8"),
           "Python-backend steps for the tritonserver bundled in nvidia-pytriton"),
)}
_PRECISION_ERRORS = {
    "fp16": "fp16 is for the gpu target; use fp32 or int8 on CPU",
    "int8": "int8 dynamic quantization is a CPU optimisation; use fp16 on GPU",
}


class OptionsError(ValueError):
    """Export options that contradict each other."""


def option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its CLI help; `cli` holds extra argparse settings (type, choices)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class ExportOptions:
    """How one model is exported and served; every field is an `embeddings-export` option."""

    name: str = option(None, "model name in the repository (default: last part of MODEL)", type=str)
    target: Target | str = option(
        "embedded", "; ".join(f"{t.name}: {t.help}" for t in TARGETS.values()), choices=tuple(TARGETS))
    precision: str = option("fp32", "fp32; fp16 (gpu target); int8 (cpu and embedded targets)",
                            choices=PRECISIONS)
    max_batch_size: int = option(64, "most texts per Triton request")
    max_seq_length: int | None = option(None, "override the model's max_seq_length", type=int)
    max_queue_delay_us: int = option(0, "the encoder's dynamic-batcher wait in microseconds (0: none; under "
                                     "load the requests that queued while it computed form its next batch; "
                                     "the tokenizer and pooler never wait)")
    max_queue_size: int = option(1024, "requests waiting per step before Triton rejects new ones")
    queue_timeout_us: int = option(30_000_000, "a request waiting longer is rejected, not left to hang")
    instances: int = option(1, "instances per step")
    encoder_instances: int = option(0, "encoder instances (0: --instances, at least 2 on the embedded target)")
    intra_op_threads: int = option(0, "embedded/cpu: the encoder's ONNX Runtime threads per instance (0: embedded "
                                      "shares the cores out between the encoder's instances; cpu: all cores); the "
                                      "pooler and score steps run 1")
    tensorrt: bool = option(False, "gpu target: TensorRT execution provider (fp16 engines with --precision fp16)")
    trt_cache_dir: str = option("/tmp/trt_cache", "gpu target with --tensorrt: where Triton keeps TensorRT "
                                "engines, a folder per encoder file, <name>-<sha256[:16]> (the Triton image's "
                                "volume, as compose and Kubernetes mount it)")
    source_label: str | None = option(None, "what to record as the source in the ensemble config", type=str)
    prompt: tuple[str, ...] | None = option(
        None, "add or override a prompt, NAME=TEXT (repeatable), e.g. --prompt 'query=query: ' for e5",
        type=str, action="append", metavar="NAME=TEXT")
    default_prompt: str | None = option(
        None, "prompt applied when a request names none (default: the model's own, if any)", type=str,
        metavar="NAME")
    calibration_file: str | None = option(
        None, "texts, one per line, that calibrate the int8 encoder rewrite and the int8/uint8 output ranges "
        "(default: a packaged set)",
        type=str)

    def __post_init__(self):
        if isinstance(self.target, str):
            if self.target not in TARGETS:
                raise OptionsError(f"target must be one of {tuple(TARGETS)}")
            object.__setattr__(self, "target", TARGETS[self.target])
        if not self.name:
            raise OptionsError("the model needs a name")
        if self.precision not in PRECISIONS:
            raise OptionsError(f"precision must be one of {PRECISIONS}")
        if self.precision not in self.target.precisions:
            raise OptionsError(_PRECISION_ERRORS[self.precision])
        if self.tensorrt and not self.target.gpu:
            raise OptionsError("TensorRT needs the gpu target")
        for key in ("max_batch_size", "instances"):
            if getattr(self, key) < 1:
                raise OptionsError(f"{key} must be at least 1")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise OptionsError("max_seq_length must be at least 1")
        object.__setattr__(self, "prompt", tuple(self.prompt or ()))
        self.prompts  # noqa: B018 - validates NAME=TEXT now

    @property
    def prompts(self) -> dict[str, str]:
        """`--prompt NAME=TEXT` pairs; the text keeps its spaces (e5's `query: `)."""
        out = {}
        for item in self.prompt:
            name, sep, text = item.partition("=")
            if not sep or not name.strip():
                raise OptionsError(f"--prompt takes NAME=TEXT, got {item!r}")
            out[name.strip()] = text
        return out

    @property
    def encoder_count(self) -> int:
        return self.encoder_instances or max(self.instances, self.target.default_encoder_instances)

    @property
    def tensorrt_fp16(self) -> bool:
        return self.precision != "fp32"

    @property
    def steps(self) -> tuple[str, ...]:
        """Names of the embedding ensemble's step models (contract.embedding_steps), in the order they run."""
        return contract.step_names(self.name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per field, its default the dataclass field's."""
    for f in dataclasses.fields(ExportOptions):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        shown = "" if f.default is None else " (default %(default)s)"
        kwargs = {"help": meta.pop("help") + shown, "default": f.default, **meta}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif "type" not in kwargs and "choices" not in kwargs:
            kwargs["type"] = type(f.default)
        parser.add_argument(flag, **kwargs)


def from_arguments(args: argparse.Namespace, **overrides: Any) -> ExportOptions:
    """The options of a parsed command line, plus `overrides`."""
    names = {f.name for f in dataclasses.fields(ExportOptions)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return ExportOptions(**{**given, **overrides})
