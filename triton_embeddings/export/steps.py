"""What the embedding and the rerank export share: step logging, the precision choice, the failure, the summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from triton_embeddings import contract
from triton_embeddings.export import onnx_export
from triton_embeddings.triton_models.onnx_session import session_providers

Log = Callable[[str], None]


class ExportError(RuntimeError):
    """The export cannot produce a faithful repository; nothing was written."""


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def step(log: Log, text: str) -> float:
    """Log the start of a step; returns its start time for `done`."""
    log(f"==> {text}")
    return time.perf_counter()


def done(log: Log, started: float, detail: str = "") -> None:
    log(f"    {time.perf_counter() - started:.1f}s" + (f": {detail}" if detail else ""))


def takes_token_types(onnx_file: Path) -> bool:
    """Whether an exported transformer has a `token_type_ids` input."""
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    return any(i.name == contract.ONNX_TOKEN_TYPE_IDS for i in graph.input)


def at_precision(src: Path, precision: str, work: Path, check: Callable, int8: Callable):
    """(file, verification, note) of the fp32 `src` at `precision`; `int8(src)` gives the int8 triple."""
    if precision == "fp32":
        return src, check(src), ""
    if precision == "fp16":
        path = onnx_export.to_fp16(src, work / "fp16.onnx")
        return path, check(path), ""
    return int8(src)


def calibration_texts(path: str | None) -> list[str]:
    """The texts of `--calibration-file`, else the packaged set (varied topics, lengths and languages)."""
    file = Path(path) if path else Path(__file__).with_name("data") / "calibration.txt"
    texts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) < 2:
        raise ExportError(f"{file}: calibration needs at least two non-empty lines")
    return texts


def require_passed(result, log: Log, shortfall: str) -> None:
    """Log the verification table; raise ExportError (`shortfall`: what fell short) unless it passed."""
    log(result.table())
    if not result.passed:
        raise ExportError(f"{shortfall}; nothing was written")


def verified_on(target: str) -> dict[str, str]:
    """The gpu target's summary row: the verification ran on this process's ONNX Runtime, not on the GPU
    engine Triton serves (CUDA, or TensorRT with `--tensorrt`)."""
    if target != "gpu":
        return {}
    provider = session_providers()[0].removesuffix("ExecutionProvider")
    return {"verified on": f"ONNX Runtime's {provider} provider in the export, not the CUDA/TensorRT engine "
                           "Triton serves on the GPU"}


def summary(title: str, rows: dict[str, object], note: str, repository: Path, files: list[Path]) -> str:
    """An export's summary: the title, aligned `label : value` rows, the note, the repository and its files."""
    rows = {**rows, **({"note": note} if note else {}), "repository": repository.resolve()}
    lines = [title] + [f"  {label:<17}: {value}" for label, value in rows.items()]
    return "\n".join(lines + [f"    {p.relative_to(repository)}" for p in files])
