#!/bin/sh
# One-shot export into $EXPORT_REPOSITORY. A repository that already holds the model is left alone
# (so `docker compose up` after the first run starts at once) unless EXPORT_FORCE=1.
# Extra CLI flags (e.g. --tensorrt, --max-batch-size 128) go in EXPORT_ARGS; arguments given to the
# container replace the whole command line.
set -eu

if [ "$#" -gt 0 ]; then
    exec embeddings-export "$@"
fi

# Defaults: the default model of triton_embeddings/defaults.py (a shell script cannot import it).
model="${EXPORT_MODEL:-sentence-transformers/all-MiniLM-L6-v2}"
name="${EXPORT_NAME:-all-MiniLM-L6-v2}"
repository="${EXPORT_REPOSITORY:-/models}"

if [ "${EXPORT_FORCE:-0}" != "1" ] && [ -f "$repository/$name/config.pbtxt" ] \
    && [ -f "$repository/${name}_encoder/1/model.onnx" ]; then
    echo "export: $repository already holds $name; set EXPORT_FORCE=1 to export it again"
    exit 0
fi

# EXPORT_ARGS is split on spaces on purpose.
# shellcheck disable=SC2086
exec embeddings-export "$model" \
    --name "$name" \
    --repository "$repository" \
    --target "${EXPORT_TARGET:-gpu}" \
    --precision "${EXPORT_PRECISION:-fp32}" \
    --source-label "$model" \
    ${EXPORT_ARGS:-}
