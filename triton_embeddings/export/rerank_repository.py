"""Write one cross-encoder's four Triton models (rerank ensemble, pair tokenizer, classifier, score step)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from triton_embeddings import contract as c
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.repository import _copy, _write_config, _write_model_py, file_sha256


def _carried(token_types: bool) -> list[str]:
    return [c.INPUT_IDS, c.ATTENTION_MASK] + ([c.TOKEN_TYPE_IDS] if token_types else [])


def pair_tokenizer_config(opts: ExportOptions, spec, token_types: bool) -> mc.ModelConfig:
    name, _, _ = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size, backend="python")
    config.input.extend(tc._inputs((c.QUERY, mc.TYPE_STRING, [1]), (c.DOCUMENT, mc.TYPE_STRING, [1])))
    outs = [(n, mc.TYPE_INT64, [-1]) for n in _carried(token_types)]
    outs += [(c.TOKEN_COUNT, mc.TYPE_INT32, [1]), (c.TRUNCATED, mc.TYPE_BOOL, [1])]
    config.output.extend(tc._outputs(*outs))
    tc._dynamic_batching(config, opts)
    tc._instances(config, opts, "KIND_CPU")
    tc._parameters(config, c.PairTokenizerParams(max_seq_length=spec.max_seq_length, truncation=spec.truncation,
                                                 pad_id=spec.pad_id))
    return config


def classifier_config(opts: ExportOptions, spec, token_types: bool, sha256: str = "") -> mc.ModelConfig:
    _, name, _ = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size)
    names = [c.ENCODER_INPUTS[n] for n in _carried(token_types)]
    # Embedded: ragged batches of pairs, regrouped by length inside the model, as for embeddings.
    config.input.extend(tc._inputs(*[(n, mc.TYPE_INT64, [-1]) for n in names], ragged=opts.target.ragged))
    config.output.extend(tc._outputs((c.CLASSIFIER_OUTPUT, mc.TYPE_FP32, [1])))
    tc._onnx_runtime(config, opts, regroup=True)
    tc._dynamic_batching(config, opts)
    tc._instances(config, opts, opts.target.instance_kind)
    tc._warmup(config, [(n, mc.TYPE_INT64, [16]) for n in names])
    if opts.tensorrt:
        tc._tensorrt(config, opts, names, spec.max_seq_length, sha256)
    return config


def score_config(opts: ExportOptions) -> mc.ModelConfig:
    _, _, name = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size)
    config.input.extend(tc._inputs((c.SCORE_STEP_INPUT, mc.TYPE_FP32, [1])))
    config.output.extend(tc._outputs((c.SCORE, mc.TYPE_FP32, [1]), (c.LOGIT, mc.TYPE_FP32, [1])))
    tc._onnx_runtime(config, opts, regroup=False, threads=tc.SMALL_STEP_THREADS)
    tc._dynamic_batching(config, opts)
    tc._instances(config, opts, opts.target.instance_kind)
    return config


def rerank_params(spec, precision: str = "", classifier_sha256: str = "") -> c.RerankParams:
    return c.RerankParams(kind=c.RERANK_KIND, max_seq_length=spec.max_seq_length, activation=spec.activation,
                          truncation=spec.truncation, source_model=spec.source, precision=precision,
                          classifier_sha256=classifier_sha256)


def rerank_ensemble_config(opts: ExportOptions, spec, token_types: bool, sha256: str = "") -> mc.ModelConfig:
    tokenizer, encoder, score = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=opts.name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.extend(tc._inputs((c.QUERY, mc.TYPE_STRING, [1]), (c.DOCUMENT, mc.TYPE_STRING, [1])))
    config.output.extend(tc._outputs((c.SCORE, mc.TYPE_FP32, [1]), (c.LOGIT, mc.TYPE_FP32, [1]),
                                     (c.TOKEN_COUNT, mc.TYPE_INT32, [1]), (c.TRUNCATED, mc.TYPE_BOOL, [1])))
    carried = _carried(token_types)
    # Ensemble-internal tensor names: the step's tensor name, lower-cased.
    steps = config.ensemble_scheduling.step
    tc._step(steps, tokenizer, {c.QUERY: c.QUERY, c.DOCUMENT: c.DOCUMENT},
             {**{n: n.lower() for n in carried}, c.TOKEN_COUNT: c.TOKEN_COUNT, c.TRUNCATED: c.TRUNCATED})
    tc._step(steps, encoder, {c.ENCODER_INPUTS[n]: n.lower() for n in carried},
             {c.CLASSIFIER_OUTPUT: c.SCORE_STEP_INPUT.lower()})
    tc._step(steps, score, {c.SCORE_STEP_INPUT: c.SCORE_STEP_INPUT.lower()}, {c.SCORE: c.SCORE, c.LOGIT: c.LOGIT})
    tc._parameters(config, rerank_params(spec, opts.precision, sha256))
    return config


def rerank_configs(opts: ExportOptions, spec, token_types: bool, sha256: str = "") -> dict[str, mc.ModelConfig]:
    """The four `ModelConfig`s of one rerank model, by Triton model name."""
    configs = [rerank_ensemble_config(opts, spec, token_types, sha256), pair_tokenizer_config(opts, spec, token_types),
               classifier_config(opts, spec, token_types, sha256), score_config(opts)]
    return {config.name: config for config in configs}


def write_rerank_model(repository: Path, opts: ExportOptions, spec, art) -> list[Path]:
    """Replace the four models of `opts.name` in `repository`; return the files written."""
    repository = Path(repository)
    names = (opts.name, *c.rerank_step_names(opts.name))
    for name in names:
        shutil.rmtree(repository / name, ignore_errors=True)
    configs = rerank_configs(opts, spec, art.token_types, file_sha256(art.classifier_onnx))
    written = [_write_config(repository / name, config) for name, config in configs.items()]
    (repository / opts.name / "1").mkdir(parents=True, exist_ok=True)
    (repository / opts.name / "1" / ".gitkeep").touch()
    tokenizer, encoder, score = names[1:]
    module = "triton_embeddings.triton_models.rerank_tokenizer_model"
    written.append(_write_model_py(repository / tokenizer / "1", module))
    written.append(_copy(art.tokenizer_json, repository / tokenizer / "1" / "tokenizer.json"))
    for name, onnx_file in ((encoder, art.classifier_onnx), (score, art.score_onnx)):
        if opts.target.python_onnx_steps:
            written.append(_write_model_py(repository / name / "1", "triton_embeddings.triton_models.onnx_model"))
        written.append(_copy(onnx_file, repository / name / "1" / "model.onnx"))
    return written
