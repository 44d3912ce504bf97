# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_RUN ?= runs/demo
DEMO_TOKENS ?= 2M

.PHONY: setup demo test clean browser

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
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode features $(DEMO_RUN)
	@echo "browse the features:  $(VENV)/bin/sparsecode serve $(DEMO_RUN)   (then open http://127.0.0.1:8000)"

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Headless Chromium + its driver for the dashboard's browser tests (Debian packages; needs root).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache
