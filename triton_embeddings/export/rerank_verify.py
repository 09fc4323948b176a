"""Check an exported rerank pipeline against `CrossEncoder.predict` before writing it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Maximum absolute difference of the activated score, per precision, over every verification pair.
THRESHOLDS = {"fp32": 1e-4, "fp16": 5e-3, "int8": 5e-2}

_LONG_DOC = (
    "Triton Inference Server batches requests dynamically, while the tokenizer pads every pair in a "
    "batch to one length; a cross-encoder reads the query and the document together. "
) * 20


def verification_pairs() -> dict[str, list[tuple[str, str]]]:
    """A fixed set: short pairs, long documents, long queries, non-ASCII and punctuation."""
    return {
        "short": [
            ("hello", "world"),
            ("How do I reset my password?", "Click 'forgot password' on the login page."),
            ("How do I reset my password?", "The quick brown fox jumps over the lazy dog."),
            ("capital of France", "Paris is the capital and largest city of France."),
            ("a", "b"),
        ],
        "long": [
            ("What does the dynamic batcher do?", _LONG_DOC),
            ("tokens " * 300, "short document"),
            ("query " * 200, ("document " * 400).strip()),
            (" ".join(str(i) for i in range(100)), " ".join(str(i) for i in range(700))),
        ],
        "non-ascii": [
            ("Wo liegt München?", "München ist die Hauptstadt Bayerns."),
            ("日本の首都は？", "東京は日本の首都です。"),
            ("Что такое булка?", "Съешь же ещё этих мягких французских булок."),
            ("emoji 🚀", "naïve café résumé — emoji 🚀🔥 and math ∑∫√"),
            ("مرحبا", "مرحبا بالعالم"),
        ],
        "punctuation": [("...", "?!?!"), ("()", "--- *** ---"), ("  \t ", "[]{}<>")],
    }


@dataclass
class RerankVerification:
    precision: str
    threshold: float
    rows: list[tuple[str, int, float, float]]  # category, pairs, max |score diff|, max |logit diff|

    @property
    def max_diff(self) -> float:
        return max(r[2] for r in self.rows)

    @property
    def passed(self) -> bool:
        return self.max_diff <= self.threshold

    @property
    def margin(self) -> float:
        """How far it clears the bar (negative: short of it); the int8 search ranks plans by it."""
        return self.threshold - self.max_diff

    @property
    def headline(self) -> str:
        return f"max |score difference| {self.max_diff:.2e}"

    def table(self) -> str:
        lines = [f"{'pairs':<12} {'n':>3} {'max |dscore|':>13} {'max |dlogit|':>13}"]
        lines += [f"{cat:<12} {n:>3} {ds:>13.2e} {dl:>13.2e}" for cat, n, ds, dl in self.rows]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: max |score difference| {self.max_diff:.2e} (bar for {self.precision}: "
                     f"{self.threshold:.0e})")
        return "\n".join(lines)


def reference_scores(model, pairs: dict[str, list[tuple[str, str]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CrossEncoder.predict's activated scores and raw logits, per category."""
    import torch

    return {
        cat: (np.asarray(model.predict(items, batch_size=16)),
              np.asarray(model.predict(items, batch_size=16, activation_fn=torch.nn.Identity())))
        for cat, items in pairs.items()
    }


def verify(pipeline, reference, pairs, precision: str) -> RerankVerification:
    rows = []
    for cat, items in pairs.items():
        scores, logits = pipeline.predict(items)
        ref_scores, ref_logits = reference[cat]
        rows.append((cat, len(items), float(np.abs(scores - ref_scores).max()),
                     float(np.abs(logits - ref_logits).max())))
    return RerankVerification(precision, THRESHOLDS[precision], rows)
