"""Write one cross-encoder's four Triton models (rerank ensemble, pair tokenizer, classifier, score step)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from triton_embeddings import contract as c
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.repository import _copy, _write_config, _write_model_py


def _embedded(opts) -> bool:
    return str(opts.target) == "embedded"


def _gpu(opts) -> bool:
    return str(opts.target) == "gpu"


def _carried(token_types: bool) -> list[str]:
    return [c.INPUT_IDS, c.ATTENTION_MASK] + ([c.TOKEN_TYPE_IDS] if token_types else [])


def pair_tokenizer_config(opts, spec, token_types: bool) -> mc.ModelConfig:
    name, _, _ = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size, backend="python")
    config.input.extend(tc._inputs((c.QUERY, mc.TYPE_STRING, [1]), (c.DOCUMENT, mc.TYPE_STRING, [1])))
    outs = [(n, mc.TYPE_INT64, [-1]) for n in _carried(token_types)]
    outs += [(c.TOKEN_COUNT, mc.TYPE_INT32, [1]), (c.TRUNCATED, mc.TYPE_BOOL, [1])]
    config.output.extend(tc._outputs(*outs))
    tc._dynamic_batching(config, opts)
    config.instance_group.append(mc.ModelInstanceGroup(count=opts.instances, kind=mc.ModelInstanceGroup.KIND_CPU))
    params = c.PairTokenizerParams(max_seq_length=spec.max_seq_length, truncation=spec.truncation, pad_id=spec.pad_id)
    tc._parameters(config, params.to_parameters())
    return config


def _onnx_step(config, opts, regroup: bool) -> None:
    if _embedded(opts):
        config.backend = "python"
        params = {"onnx_file": "model.onnx", "intra_op_threads": str(opts.intra_op_threads)}
        if regroup:
            params["regroup_by_length"] = "true"
        tc._parameters(config, params)
    else:
        config.platform = "onnxruntime_onnx"
        if not _gpu(opts):
            tc._parameters(config, {c.ORT_BACKEND_INTRA_OP_THREADS: str(opts.intra_op_threads)})
    tc._dynamic_batching(config, opts)
    kind = mc.ModelInstanceGroup.KIND_GPU if _gpu(opts) else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(mc.ModelInstanceGroup(count=opts.instances, kind=kind))


def classifier_config(opts, spec, token_types: bool) -> mc.ModelConfig:
    _, name, _ = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size)
    names = [c.ENCODER_INPUTS[n] for n in _carried(token_types)]
    # Embedded: ragged batches of pairs, regrouped by length inside the model, as for embeddings.
    config.input.extend(tc._inputs(*[(n, mc.TYPE_INT64, [-1]) for n in names], ragged=_embedded(opts)))
    config.output.extend(tc._outputs((c.CLASSIFIER_OUTPUT, mc.TYPE_FP32, [1])))
    _onnx_step(config, opts, regroup=True)
    tc._warmup(config, [(n, mc.TYPE_INT64, [16]) for n in names])
    if getattr(opts, "tensorrt", False):
        tc._tensorrt(config, opts, names, spec.max_seq_length)
    return config


def score_config(opts) -> mc.ModelConfig:
    _, _, name = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size)
    config.input.extend(tc._inputs((c.SCORE_STEP_INPUT, mc.TYPE_FP32, [1])))
    config.output.extend(tc._outputs((c.SCORE, mc.TYPE_FP32, [1]), (c.LOGIT, mc.TYPE_FP32, [1])))
    _onnx_step(config, opts, regroup=False)
    return config


def rerank_ensemble_config(opts, spec, token_types: bool) -> mc.ModelConfig:
    tok_name, enc_name, score_name = c.rerank_step_names(opts.name)
    config = mc.ModelConfig(name=opts.name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.extend(tc._inputs((c.QUERY, mc.TYPE_STRING, [1]), (c.DOCUMENT, mc.TYPE_STRING, [1])))
    config.output.extend(tc._outputs((c.SCORE, mc.TYPE_FP32, [1]), (c.LOGIT, mc.TYPE_FP32, [1]),
                                     (c.TOKEN_COUNT, mc.TYPE_INT32, [1]), (c.TRUNCATED, mc.TYPE_BOOL, [1])))
    steps = config.ensemble_scheduling.step
    tok = steps.add(model_name=tok_name, model_version=-1)
    tok.input_map[c.QUERY], tok.input_map[c.DOCUMENT] = c.QUERY, c.DOCUMENT
    for name in _carried(token_types):
        tok.output_map[name] = name.lower()
    tok.output_map[c.TOKEN_COUNT], tok.output_map[c.TRUNCATED] = c.TOKEN_COUNT, c.TRUNCATED
    enc = steps.add(model_name=enc_name, model_version=-1)
    for name in _carried(token_types):
        enc.input_map[c.ENCODER_INPUTS[name]] = name.lower()
    enc.output_map[c.CLASSIFIER_OUTPUT] = "logits"
    score = steps.add(model_name=score_name, model_version=-1)
    score.input_map[c.SCORE_STEP_INPUT] = "logits"
    score.output_map[c.SCORE], score.output_map[c.LOGIT] = c.SCORE, c.LOGIT
    params = c.RerankParams(kind=c.RERANK_KIND, max_seq_length=spec.max_seq_length, activation=spec.activation,
                            truncation=spec.truncation, source_model=spec.source)
    tc._parameters(config, params.to_parameters())
    return config


def rerank_configs(opts, spec, token_types: bool) -> dict[str, mc.ModelConfig]:
    """The four `ModelConfig`s of one rerank model, by Triton model name."""
    configs = [rerank_ensemble_config(opts, spec, token_types), pair_tokenizer_config(opts, spec, token_types),
               classifier_config(opts, spec, token_types), score_config(opts)]
    return {config.name: config for config in configs}


def write_rerank_model(repository: Path, opts, spec, art) -> list[Path]:
    """Replace the four models of `opts.name` in `repository`; return the files written."""
    repository = Path(repository)
    names = (opts.name, *c.rerank_step_names(opts.name))
    for name in names:
        shutil.rmtree(repository / name, ignore_errors=True)
    written = [_write_config(repository / name, config)
               for name, config in rerank_configs(opts, spec, art.token_types).items()]
    (repository / opts.name / "1").mkdir(parents=True, exist_ok=True)
    (repository / opts.name / "1" / ".gitkeep").touch()
    tok_name, enc_name, score_name = names[1:]
    module = "triton_embeddings.triton_models.rerank_tokenizer_model"
    written.append(_write_model_py(repository / tok_name / "1", module))
    written.append(_copy(art.tokenizer_json, repository / tok_name / "1" / "tokenizer.json"))
    for name, onnx_file in ((enc_name, art.classifier_onnx), (score_name, art.score_onnx)):
        if _embedded(opts):
            written.append(_write_model_py(repository / name / "1", "triton_embeddings.triton_models.onnx_model"))
        written.append(_copy(onnx_file, repository / name / "1" / "model.onnx"))
    return written
