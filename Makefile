# `make demo` runs the main job, `make test` the tests; both set themselves up first (idempotent).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install system-deps test demo bench lint clean

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

# torch is pinned to the CPU wheels that torchaudio/torchcodec are built against; the rest
# comes from pyproject.toml. Re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchaudio==2.11.0 'torchcodec==0.15.*'
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest tests

demo: install
	$(PY) -m dali_hf.demo

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check dali_hf modeling trainers tests bench

clean:
	rm -rf $(VENV) outputs
