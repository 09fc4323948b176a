"""The export: sentence-transformers model in, verified Triton model repository out."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from triton_embeddings import quantize
from triton_embeddings.export import onnx_export, verify
from triton_embeddings.export.model_spec import ModelSpec, read_spec, with_prompts
from triton_embeddings.export.pipeline import OnnxPipeline
from triton_embeddings.export.pooler import build_pooler
from triton_embeddings.export.repository import Artifacts, write_model
from triton_embeddings.export.triton_config import ServingOptions
from triton_embeddings.triton_models.tokenize import TextTokenizer

PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(RuntimeError):
    """The export cannot produce a faithful repository; nothing was written."""


@dataclass
class ExportResult:
    spec: ModelSpec
    options: ServingOptions
    precision: str
    verification: verify.Verification
    files: list[Path]
    repository: Path
    note: str = ""

    def summary(self) -> str:
        lines = [
            f"Exported {self.spec.source} as '{self.options.name}' ({self.options.target}, {self.precision})",
            f"  output dimension : {self.spec.dimension}",
            f"  max length       : {self.spec.max_seq_length} tokens",
            f"  pooling          : {self.spec.pooling_mode}{' + normalize' if self.spec.normalize else ''}",
            f"  min cosine       : {self.verification.min_cosine:.6f} (bar {self.verification.threshold})",
            f"  prompts          : {', '.join(self.spec.prompts) or '(none)'}"
            f"{f' (default {self.spec.default_prompt_name})' if self.spec.default_prompt_name else ''}",
        ]
        if self.note:
            lines.append(f"  note             : {self.note}")
        lines.append(f"  repository       : {self.repository.resolve()}")
        lines += [f"    {p.relative_to(self.repository)}" for p in self.files]
        return "\n".join(lines)


def _step(log: Callable[[str], None], text: str):
    log(f"==> {text}")
    return time.perf_counter()


def default_calibration_texts() -> list[str]:
    """The packaged calibration set (varied topics, lengths and languages), one text per line."""
    path = Path(__file__).with_name("data") / "calibration.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_prompts(model, spec: ModelSpec, tokenizer_json: Path, encoder: Path, pooler: Path, bar: float) -> None:
    """Every prompt of the model gives sentence-transformers' vectors (`encode(..., prompt_name=...)`)."""
    texts = verify.verification_texts()["short"]
    for name, prompt in spec.prompts.items():
        tokenizer = TextTokenizer(str(tokenizer_json), spec.max_seq_length, prompt, spec.pad_id)
        served = OnnxPipeline(tokenizer, str(encoder), str(pooler), lowercase=spec.lowercase).embed(texts)
        low = float(verify.cosine(served, model.encode(texts, prompt_name=name)).min())
        if low < bar:
            raise ExportError(f"prompt {name!r} is not served faithfully (min cosine {low:.6f} < {bar})")


def export_model(
    source: str,
    repository: Path,
    options: ServingOptions,
    precision: str = "fp32",
    max_seq_length: int | None = None,
    source_label: str | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    prompts: dict[str, str] | None = None,
    default_prompt: str | None = None,
    calibration_texts: list[str] | None = None,
) -> ExportResult:
    """Export `source` (local folder or hub id), verify it, then write it into `repository`."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}")
    if precision == "fp16" and options.target != "gpu":
        raise ExportError("fp16 is for the gpu target; use fp32 or int8 on CPU")
    if precision == "int8" and options.target == "gpu":
        raise ExportError("int8 dynamic quantization is a CPU optimisation; use fp16 on GPU")
    from sentence_transformers import SentenceTransformer

    t = _step(log, f"Loading {source}")
    model = SentenceTransformer(source, device="cpu", trust_remote_code=False)
    spec = with_prompts(read_spec(model, source_label or source, max_seq_length), prompts or {}, default_prompt)
    model.prompts, model.default_prompt_name = dict(spec.prompts), spec.default_prompt_name
    if max_seq_length:
        model.max_seq_length = max_seq_length
    log(f"    {time.perf_counter() - t:.1f}s: dim {spec.dimension}, max length {spec.max_seq_length}, "
        f"pooling {spec.pooling_mode}, normalize {spec.normalize}")

    with tempfile.TemporaryDirectory(prefix="embeddings-export-") as tmp:
        work = Path(tmp)
        t = _step(log, "Exporting the transformer to ONNX")
        encoder = onnx_export.export_encoder(model, work / "fp32")
        graph = onnx.load(str(encoder), load_external_data=False).graph
        token_types = any(i.name == "token_type_ids" for i in graph.input)
        log(f"    {time.perf_counter() - t:.1f}s")

        pooler = work / "pooler.onnx"
        onnx.save(build_pooler(spec.pooling_mode, spec.normalize, spec.dimension), str(pooler))
        tokenizer_json = work / "tokenizer.json"
        model[0].tokenizer.backend_tokenizer.save(str(tokenizer_json))
        tokenizer = TextTokenizer(str(tokenizer_json), spec.max_seq_length, spec.default_prompt, spec.pad_id)

        t = _step(log, "Computing reference embeddings with sentence-transformers")
        texts = verify.verification_texts()
        reference = verify.reference_embeddings(model, texts)
        log(f"    {time.perf_counter() - t:.1f}s")

        def check(candidate: Path) -> verify.Verification:
            pipeline = OnnxPipeline(tokenizer, str(candidate), str(pooler), lowercase=spec.lowercase)
            return verify.verify(pipeline, reference, texts, precision)

        t = _step(log, f"Verifying the {precision} pipeline against the original model")
        note = ""
        if precision == "fp32":
            chosen, result = encoder, check(encoder)
        elif precision == "fp16":
            chosen = onnx_export.to_fp16(encoder, work / "fp16.onnx")
            result = check(chosen)
        else:
            found = onnx_export.search_int8(encoder, work / "int8.onnx", check, log)
            if found is None:
                raise ExportError(
                    f"the int8 export is not faithful: no quantization plan reaches min cosine "
                    f"{verify.THRESHOLDS['int8']}; nothing was written (use fp32)"
                )
            chosen, plan, result = found
            note = f"int8 plan: {plan.label}"
        log(result.table())
        if not result.passed:
            raise ExportError(
                f"the {precision} export is not faithful (min cosine {result.min_cosine:.6f} < "
                f"{result.threshold}); nothing was written"
            )
        check_prompts(model, spec, tokenizer_json, chosen, pooler, result.threshold)
        log(f"    {time.perf_counter() - t:.1f}s")

        t = _step(log, "Calibrating the int8/uint8 ranges")
        calibration = calibration_texts or default_calibration_texts()
        pipeline = OnnxPipeline(tokenizer, str(chosen), str(pooler), lowercase=spec.lowercase)
        spec.quantization_ranges = quantize.calibrate(pipeline.embed(calibration))
        log(f"    {time.perf_counter() - t:.1f}s: {len(calibration)} texts")

        t = _step(log, f"Writing the Triton models into {repository}")
        hidden = spec.dimension
        files = write_model(Path(repository), options, spec,
                            Artifacts(chosen, pooler, tokenizer_json, token_types, hidden))
        log(f"    {time.perf_counter() - t:.1f}s")
    return ExportResult(spec, options, precision, result, files, Path(repository), note)
