"""The export flow over a model kind: a third kind, declared in this file on the base alone, is exported,
verified and written by the same flow as embeddings and rerank; and the pooler refuses modes it cannot build."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from triton_embeddings import contract as c
from triton_embeddings.export import flow, steps
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.cross_encoder import build_score_step, export_classifier
from triton_embeddings.export.kinds import base
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.steps import ExportError
from triton_embeddings.triton_models.tokenize import TextTokenizer

HEAD = "_head"
TEXTS = {"short": ["hello", "a b c", "How do I reset my password?"], "other": ["Über", "...", "x y z w"]}
QUIET = {"log": lambda _: None}


def classify_steps() -> c.EnsembleSpec:
    """TEXT -> tokenizer -> classifier -> head -> SCORE: the steps this stub kind declares."""
    text, score = c.TensorSpec(c.TEXT, "STRING", (1,)), c.TensorSpec(c.SCORE, "FP32", (1,))
    carried = [c.TensorSpec(n, "INT64", (-1,), n.lower(), only_with=c.TOKEN_TYPES if n == c.TOKEN_TYPE_IDS else "")
               for n in (c.INPUT_IDS, c.ATTENTION_MASK, c.TOKEN_TYPE_IDS)]
    return c.EnsembleSpec("classify", (text,), (score,), (
        c.StepSpec(c.TOKENIZER_SUFFIX, c.PYTHON_BACKEND, (text,), tuple(carried), ("tokenizer.json",)),
        c.StepSpec(c.ENCODER_SUFFIX, c.ONNX_BACKEND, tuple(replace(t, name=t.name.lower()) for t in carried),
                   (c.TensorSpec(c.CLASSIFIER_OUTPUT, "FP32", (1,), "logits"),), ("model.onnx",)),
        c.StepSpec(HEAD, c.ONNX_BACKEND, (c.TensorSpec(c.SCORE_STEP_INPUT, "FP32", (1,), "logits"),), (score,),
                   ("model.onnx",)),
    ))


class Difference(base.Verification):
    measure = "max |difference|"
    higher_is_better = False
    columns = ("texts", "max |d|", "mean |d|", 10)
    formats = (".2e", ".2e", ".0e")


class Scorer(base.OnnxSteps):
    def scores(self, texts: list[str]) -> np.ndarray:
        logits = self.encode(self.tokenizer(texts))
        (score, _) = self.head.run(None, {c.SCORE_STEP_INPUT: logits.astype(np.float32)})
        return score.reshape(-1)


@dataclass
class Files(base.StepArtifacts):
    classifier: Path
    head: Path
    tokenizer_json: Path
    token_types: bool = False

    @property
    def encoder(self) -> Path:
        return self.classifier

    def with_encoder(self, path: Path) -> Files:
        return replace(self, classifier=path)

    def step_files(self) -> dict[str, Path]:
        return {c.TOKENIZER_SUFFIX: self.tokenizer_json, c.ENCODER_SUFFIX: self.classifier, HEAD: self.head}


@dataclass
class Result:
    verification: base.Verification
    files: list[Path]


class ClassifyKind(base.Kind):
    """One text, one logit: the tiny cross-encoder's classifier read on single texts."""

    kind = "classify"
    thresholds = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}
    modules = {c.TOKENIZER_SUFFIX: "triton_embeddings.triton_models.tokenizer_model"}
    reference_name = "the classifier in torch"

    @property
    def steps(self) -> c.EnsembleSpec:
        return classify_steps()

    def load(self, source, options, log):
        from sentence_transformers import CrossEncoder

        return CrossEncoder(source, device="cpu"), c.TokenizerParams(max_seq_length=64)

    def build(self, model, spec, work, log) -> Files:
        head = work / "head.onnx"
        onnx.save(build_score_step("identity"), str(head))
        model.tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
        classifier = export_classifier(model, work / "fp32")
        return Files(classifier, head, work / "tokenizer.json", steps.takes_token_types(classifier))

    def tokenizer(self, spec, art):
        return TextTokenizer.from_params(spec, art.tokenizer_json.parent)

    def runner(self, tokenizer, encoder, art) -> Scorer:
        return Scorer(tokenizer, str(encoder), str(art.head))

    def verification_inputs(self):
        return TEXTS

    def reference(self, model, inputs):
        import torch

        with torch.no_grad():
            return {k: model.model(**model.tokenizer(v, padding=True, return_tensors="pt")).logits.numpy().reshape(-1)
                    for k, v in inputs.items()}

    def verify(self, runner, reference, inputs, precision):
        rows = []
        for k, texts in inputs.items():
            diff = np.abs(runner.scores(texts) - reference[k])
            rows.append((k, len(texts), float(diff.max()), float(diff.mean())))
        return Difference(precision, self.thresholds[precision], rows)

    def calibration_feeds(self, tokenizer, texts):
        return [base.encoder_feed(tokenizer(texts))]

    def shortfall(self, result):
        return f"max |difference| {result.value:.2e} > {result.threshold:.0e}"

    def configs(self, opts, spec, token_types, sha256=""):
        tokenizer, encoder, head = (bound := self.steps.bind({}, {c.TOKEN_TYPES} if token_types else set())).steps
        built = [tc.ensemble_of(opts, bound, c.OnnxStepParams()), tc.tokenizer_step(opts, tokenizer, spec),
                 tc.encoder_step(opts, encoder, spec.max_seq_length, sha256), tc.small_step(opts, head)]
        return {config.name: config for config in built}

    def result(self, spec, options, verification, files, repository, note):
        return Result(verification, files)


def test_a_new_kind_is_exported_verified_and_written_by_the_flow(tmp_path, cross_encoder_source):
    result = flow.export(ClassifyKind(), cross_encoder_source, tmp_path, ExportOptions(name="k"), **QUIET)
    assert result.verification.passed and result.verification.value <= 1e-4
    names = ["k", "k_tokenizer", "k_encoder", "k_head"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    ensemble = tc.load(tmp_path / "k" / "config.pbtxt")
    assert [s["model_name"] for s in ensemble["ensemble_scheduling"]["step"]] == names[1:]
    assert ensemble["ensemble_scheduling"]["step"][1]["output_map"] == {"logits": "logits"}
    encoder_inputs = [i["name"] for i in tc.load(tmp_path / "k_encoder" / "config.pbtxt")["input"]]
    assert encoder_inputs == ["input_ids", "attention_mask", "token_type_ids"]  # BERT takes token types
    assert [o["name"] for o in ensemble["output"]] == [c.SCORE]
    for step in names[1:]:
        assert (tmp_path / step / "1" / "model.py").exists()  # embedded target: every step on the Python backend
    assert (tmp_path / "k_tokenizer" / "1" / "tokenizer.json").exists()
    assert tc.load(tmp_path / "k_head" / "config.pbtxt")["input"][0]["name"] == c.SCORE_STEP_INPUT


def test_a_new_kind_below_its_bar_writes_nothing(tmp_path, cross_encoder_source, monkeypatch):
    monkeypatch.setitem(ClassifyKind.thresholds, "fp32", 0.0)  # no difference at all: unreachable
    with pytest.raises(ExportError, match="not faithful.*max .difference"):
        flow.export(ClassifyKind(), cross_encoder_source, tmp_path / "r", ExportOptions(name="k"), **QUIET)
    assert not (tmp_path / "r").exists()


def test_the_runner_follows_the_declared_steps(tmp_path, cross_encoder_source):
    kind = ClassifyKind()
    model, spec = kind.load(cross_encoder_source, ExportOptions(name="k"), QUIET["log"])
    art = kind.build(model, spec, tmp_path, QUIET["log"])
    runner = kind.runner(kind.tokenizer(spec, art), art.encoder, art)
    runner.follow(kind.steps)
    steps = kind.steps
    renamed = replace(steps.steps[2], inputs=(c.TensorSpec("OTHER", "FP32", (1,)),))
    with pytest.raises(ExportError, match=f"step {HEAD} does not match"):
        runner.follow(replace(steps, steps=(*steps.steps[:2], renamed)))


def test_every_pooling_mode_has_its_own_graph_and_an_unknown_one_is_an_error(monkeypatch):
    from triton_embeddings.export import pooler
    from triton_embeddings.export.model_spec import POOLING_MODES

    assert set(POOLING_MODES) == set(pooler.POOLERS)
    # A mode name added to what specs accept, without its own graph, is refused (not built as another mode).
    monkeypatch.setattr(pooler, "POOLING_MODES", (*POOLING_MODES, "weightedmean"))
    with pytest.raises(ValueError, match="weightedmean"):
        pooler.build_pooler("weightedmean", True, 8)
    with pytest.raises(ValueError, match="unknown pooling mode 'weightedmean'"):
        pooler._pool(pooler._Graph(), "weightedmean", "e", "m", "m3", "a")


def test_declared_steps_name_every_step_model():
    assert c.step_names("m") == ("m_tokenizer", "m_encoder", "m_pooler")
    assert c.step_names("r", c.RERANK_KIND) == c.rerank_step_names("r") == ("r_tokenizer", "r_encoder", "r_score")
    bound = c.steps_of(c.EMBEDDING_KIND).bind({c.DIMENSION: 8}, set())
    assert c.TOKEN_TYPE_IDS not in {t.name for t in bound.steps[0].outputs}
    assert bound.step(c.POOLER_SUFFIX).outputs[0] == c.TensorSpec(c.EMBEDDING, "FP32", (8,))
