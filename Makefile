# The two commands a new user types (see README):
#   make demo   set up .venv if needed, prepare the demo model, start the server, send requests, keep serving
#   make test   set up .venv if needed, run the whole test suite (what CI runs)
SHELL := /bin/bash
PY := .venv/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test experiment bench clean-venv

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m safegene_runtime.cli demo

# pytest exits 5 when it collected no test: that is a failure here, never a green run.
test: setup
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

experiment: setup
	$(PY) -m experiments.smollm2.run $(EXPERIMENT_ARGS)

bench: setup
	$(PY) bench/serving.py && $(PY) bench/pipeline.py

clean-venv:
	rm -rf .venv
