# The two commands of the README, plus the usual targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: serve test install install-test lint format bench clean images

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

install: $(STAMP)          ## the default profile: API, espeak engine, SQLite, local files

install-test: $(TEST_STAMP)  ## plus the cluster adapters, KServe, test servers, linters

serve: $(STAMP)            ## run the whole API on http://localhost:8012
	$(BIN)/cosyvoice-api serve

test: $(TEST_STAMP)        ## the whole suite, in the embedded, cluster and predictor profiles
	$(BIN)/python -m tests.run

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(TEST_STAMP)       ## the benchmarks under bench/
	$(BIN)/python -m bench.all

images:                    ## the API image with buildah, on a debootstrap Debian base (root)
	tools/images/build-api-image.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
