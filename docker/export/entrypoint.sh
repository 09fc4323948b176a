#!/bin/sh
# One-shot export into $EXPORT_REPOSITORY. A repository that already holds a model is left alone
# (so `docker compose up` after the first run starts at once) unless EXPORT_FORCE=1.
# EXPORT_MODELS (space-separated hub ids or folders, each named after its last path part) exports a
# line-up; when it is empty, EXPORT_MODEL is exported as EXPORT_NAME. When $EXPORT_RERANKER names a
# cross-encoder, a reranker is exported beside them in the same repository (one Triton, one gateway
# serve both).
# Extra CLI flags (e.g. --tensorrt, --max-batch-size 128) go in EXPORT_ARGS; arguments given to the
# container replace the whole command line.
set -eu

if [ "$#" -gt 0 ]; then
    exec embeddings-export "$@"
fi

repository="${EXPORT_REPOSITORY:-/models}"

export_one() {
    model="$1"
    name="$2"
    if [ "${EXPORT_FORCE:-0}" != "1" ] && [ -f "$repository/$name/config.pbtxt" ] \
        && [ -f "$repository/${name}_encoder/1/model.onnx" ]; then
        echo "export: $repository already holds $name; set EXPORT_FORCE=1 to export it again"
        return 0
    fi
    # EXPORT_ARGS is split on spaces on purpose.
    # shellcheck disable=SC2086
    embeddings-export "$model" \
        --name "$name" \
        --repository "$repository" \
        --target "${EXPORT_TARGET:-gpu}" \
        --precision "${EXPORT_PRECISION:-fp32}" \
        --source-label "$model" \
        --trt-cache-dir "${EXPORT_TRT_CACHE_DIR:-/tmp/trt_cache}" \
        ${EXPORT_ARGS:-}
}

if [ -n "${EXPORT_MODELS:-}" ]; then
    for model in $EXPORT_MODELS; do
        export_one "$model" "$(basename "$model")"
    done
else
    # Defaults: the default model of triton_embeddings/defaults.py (a shell script cannot import it).
    export_one "${EXPORT_MODEL:-sentence-transformers/all-MiniLM-L6-v2}" "${EXPORT_NAME:-all-MiniLM-L6-v2}"
fi
if [ -n "${EXPORT_RERANKER:-}" ]; then
    export_one "$EXPORT_RERANKER" "${EXPORT_RERANKER_NAME:-$(basename "$EXPORT_RERANKER")}"
fi
