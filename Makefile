# `make demo` and `make test` create .venv when it is missing, install, and run.
PYTHON ?= python3
VENV ?= .venv
# torch with the torchvision built for it (timm's training transforms need torchvision): the pair
# GPU users install, which also runs on a CPU. Override for another build, e.g.
#   make test TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false

# Let Python keep its byte-code caches: without them every run recompiles torch and transformers.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/python recipes/demo.py

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) demo_output .pytest_cache
