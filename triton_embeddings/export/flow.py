"""The export of any model kind, in one order: spec -> ONNX -> steps -> verify -> write.

A kind (`triton_embeddings.export.kinds`) declares its steps, how to load and build them, the reference
its verification compares with and the bar; this flow runs them, chooses the precision and writes the
repository only after the verification passed.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from triton_embeddings.export import onnx_export, steps
from triton_embeddings.export.kinds.base import Kind, StepArtifacts, Verification
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.steps import ExportError, Log, done, step


class _Checker:
    """Verifies candidate encoders against the kind's reference (with the one tokenizer of the export)."""

    def __init__(self, kind: Kind, model, spec, art: StepArtifacts, precision: str, log: Log):
        self.kind, self.art, self.precision = kind, art, precision
        self.tokenizer = kind.tokenizer(spec, art)
        t = step(log, f"Computing the reference with {kind.reference_name}")
        self.inputs = kind.verification_inputs()
        self.reference = kind.reference(model, self.inputs)
        self.selection = None
        if precision == "int8" and kind.selection_margin is not None:
            selection = kind.selection_inputs()
            self.selection = selection, kind.reference(model, selection)
        done(log, t)

    def runner(self, candidate: Path):
        """A new runner (the int8 search rewrites one candidate file in place), checked against the kind's
        declared steps."""
        runner = self.kind.runner(self.tokenizer, candidate, self.art)
        runner.follow(self.kind.steps)
        return runner

    def check(self, candidate: Path) -> Verification:
        return self.kind.verify(self.runner(candidate), self.reference, self.inputs, self.precision)

    def choose(self, candidate: Path) -> Verification:
        """What the int8 search ranks plans by: the selection inputs with a margin when the kind has them (the
        bar is then not met in-sample), else the verification itself."""
        if self.selection is None:
            return self.check(candidate)
        inputs, reference = self.selection
        result = self.kind.verify(self.runner(candidate), reference, inputs, self.precision)
        return replace(result, threshold=result.threshold + self.kind.selection_margin)


def _int8(kind: Kind, checker: _Checker, feeds: list[dict], work: Path, log: Log):
    def search(src: Path):
        found = onnx_export.search_int8(src, work / "int8.onnx", checker.choose, log, feeds)
        if found is None:
            raise ExportError(f"the int8 export is not faithful: no quantization plan passes the bar "
                              f"({kind.thresholds['int8']}); nothing was written (use fp32)")
        chosen, plan, result = found
        if checker.selection is None:
            return chosen, result, f"int8 plan: {plan.label}"
        return chosen, checker.check(chosen), f"int8 plan: {plan.label} (chosen on other texts than it is verified on)"

    return search


def verified(kind: Kind, model, spec, art: StepArtifacts, precision: str, calibration: list[str], work: Path,
             log: Log):
    """The encoder at `precision` that the kind's verification passes: (runner over it, result, note);
    raise ExportError when none is faithful."""
    checker = _Checker(kind, model, spec, art, precision, log)
    t = step(log, f"Verifying the {precision} pipeline against {kind.reference_name}")
    feeds = kind.calibration_feeds(checker.tokenizer, calibration) if precision == "int8" else None
    chosen, result, note = steps.at_precision(art.encoder, precision, work, checker.check,
                                              _int8(kind, checker, feeds, work, log))
    steps.require_passed(result, log, f"the {precision} export is not faithful ({kind.shortfall(result)})")
    done(log, t)
    return chosen, checker.runner(chosen), result, note


def export(kind: Kind, source: str, repository: Path, options: ExportOptions, log: Log = steps.stderr):
    """Export `source` (local folder or hub id) as `kind`, verify it, then write it into `repository`."""
    calibration = steps.calibration_texts(options.calibration_file)  # a bad file fails before the long work
    model, spec = kind.load(source, options, log)
    with tempfile.TemporaryDirectory(prefix=f"{kind.kind}-export-") as tmp:
        work = Path(tmp)
        art = kind.build(model, spec, work, log)
        chosen, runner, result, note = verified(kind, model, spec, art, options.precision, calibration, work, log)
        spec = kind.finish(model, spec, art, runner, result, calibration, log)
        t = step(log, f"Writing the Triton models into {repository}")
        files = kind.write(Path(repository), options, spec, art.with_encoder(chosen))
        done(log, t)
    return kind.result(spec, options, result, files, Path(repository), note)
