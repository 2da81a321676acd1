# `make demo` runs the main job, `make test` the tests; both set themselves up first (idempotent).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install system-deps test demo bench lint clean constraints

install: system-deps $(STAMP)

# Debian's ffmpeg (torchcodec decodes audio/video with it) and a Java runtime (pycocoevalcap's
# METEOR and PTB tokenizer), installed only when missing and only when we may (root).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing (not root: install them with your package manager)"; \
	  fi; \
	fi

# The package with its `dev` extra (tests, the `eval` metrics, DeepSpeed, TRL), every version pinned by
# constraints.txt: the versions the README's tables were made with (torch 2.14.1 with the torchaudio and
# torchcodec builds made for it among them). Everything comes from PyPI, whose Linux torch wheel is the CUDA
# build: it brings about 4 GB of nvidia-* (CUDA runtime, cuDNN, NCCL, ...) and triton packages, which a CPU-only
# machine never loads but which GPU training needs. PyTorch's CPU-only wheels are on PyTorch's own package
# index, not on PyPI. Re-runs only when pyproject.toml or constraints.txt changes.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Re-pin constraints.txt to what .venv holds (after changing a dependency and installing it).
constraints: $(STAMP)
	@{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

test: install
	$(PY) -m pytest tests

demo: install
	$(PY) -m dali_hf.demo

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check dali_hf modeling trainers model_cards tests bench

clean:
	rm -rf $(VENV) outputs
