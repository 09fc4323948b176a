#!/usr/bin/env bash
# Serve a local sentence-transformers folder with Infinity (infinity-emb 0.0.78, torch engine, CPU),
# as a --peer for bench/bench.py. Infinity lives in its own virtualenv (see docs/benchmark.md,
# "A peer: Infinity"); INFINITY_VENV overrides where (default /work/infinity-venv).
#
#   bench/peer_infinity.sh MODEL_DIR NAME PORT
#   make bench BENCH_ARGS="--peer http://127.0.0.1:PORT --peer-model NAME"
#
# Routes sit under /v1 (--url-prefix /v1), so the OpenAI path /v1/embeddings works as bench.py sends it.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 MODEL_DIR NAME PORT" >&2
  exit 2
fi
model_dir=$1
name=$2
port=$3

if [[ ! -f "$model_dir/modules.json" && ! -f "$model_dir/config.json" ]]; then
  echo "$0: $model_dir is not a local model folder (no modules.json or config.json)" >&2
  exit 2
fi
venv=${INFINITY_VENV:-/work/infinity-venv}
if [[ ! -x "$venv/bin/infinity_emb" ]]; then
  echo "$0: no infinity_emb in $venv (set INFINITY_VENV, or install it: docs/benchmark.md)" >&2
  exit 2
fi

# Offline: the model comes from the folder, nothing from a hub; no usage statistics sent.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export INFINITY_ANONYMOUS_USAGE_STATS=0 DO_NOT_TRACK=1

exec "$venv/bin/infinity_emb" v2 \
  --model-id "$(cd "$model_dir" && pwd)" \
  --served-model-name "$name" \
  --engine torch \
  --device cpu \
  --dtype float32 \
  --batch-size 32 \
  --no-bettertransformer \
  --no-compile \
  --no-vector-disk-cache \
  --model-warmup \
  --url-prefix /v1 \
  --host 127.0.0.1 \
  --port "$port"
