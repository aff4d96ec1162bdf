# The two commands a new user types (see README):
#   make demo   set up .venv if needed, prepare the demo model, start the server, send requests, keep serving
#   make test   set up .venv if needed, run the whole test suite (what CI runs)
#   make test-fast   the unit tests only: no vLLM engine, no server, nothing marked slow (under 2 minutes)
SHELL := /bin/bash
PY := .venv/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-fast experiment experiment-pipeline bench clean-venv

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m safegene_runtime.cli demo

# pytest exits 5 when it collected no test: that is a failure here, never a green run.
# Two lanes side by side (engine tests | unit tests), see scripts/run_tests.sh; PYTEST_ARGS runs one plain pytest.
test: setup
	@PY=$(PY) bash scripts/run_tests.sh $(PYTEST_ARGS)

# The fast lane while developing: everything that starts no engine, server or real model (markers in pyproject.toml).
test-fast: setup
	@set +e; $(PY) -m pytest -m "not engine and not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

# The results page's numbers again, from the responses saved in results/ (re-judged; minutes, no model run).
experiment: setup
	$(PY) -m experiments.smollm2.evidence recount $(EXPERIMENT_ARGS)

# The staged SmolLM2 pipeline that trains the family and measures it (hours; resumable).
experiment-pipeline: setup
	$(PY) -m experiments.smollm2.run $(PIPELINE_ARGS)

bench: setup
	$(PY) bench/serving.py && $(PY) bench/pipeline.py

clean-venv:
	rm -rf .venv
