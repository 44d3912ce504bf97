# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_RUN ?= runs/demo
DEMO_TOKENS ?= 2M

.PHONY: setup demo test clean

setup: $(STAMP)

# torch first, pinned: on these machines 2.13.0 is a local CPU build; a looser pin pulls CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode train --hook encoder.layer.3 --arch topk --k 32 --latents 6144 \
	    --tokens $(DEMO_TOKENS) --out $(DEMO_RUN) --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode eval $(DEMO_RUN)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
