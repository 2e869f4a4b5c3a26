# The two commands of the README, plus the usual targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: serve test test-upstream test-upstream-api cv3tiny-model install install-test lint format bench clean images

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

# The CosyVoice adapter against the real upstream code: COSYVOICE_HOME is a checkout of
# FunAudioLLM/CosyVoice (the commit in core/engines/cosyvoice_loop.py), UPSTREAM_PYTHON a
# Python with upstream's requirements and this project installed (README "CosyVoice
# engine"). Without COSYVOICE_HOME the tests skip with the reason.
UPSTREAM_PYTHON ?= $(BIN)/python
CV3TINY ?= ../shared/tools/cv3tiny
UPSTREAM_CACHE ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/cosyvoice-serving,tests/.cache)
CV3TINY_MODEL ?= $(UPSTREAM_CACHE)/cv3tiny/model_long

cv3tiny-model:
	@if [ -n "$(COSYVOICE_HOME)" ] && [ ! -f "$(CV3TINY_MODEL)/.complete" ]; then \
		echo "building the tiny CosyVoice3 model into $(CV3TINY_MODEL)"; \
		rm -rf "$(CV3TINY_MODEL)"; \
		PYTHONPATH="$(COSYVOICE_HOME)/third_party/Matcha-TTS:$(COSYVOICE_HOME)" \
			$(UPSTREAM_PYTHON) $(CV3TINY)/build_tiny.py --home "$(COSYVOICE_HOME)" \
			--out "$(CV3TINY_MODEL)" --no-stop && touch "$(CV3TINY_MODEL)/.complete"; \
	fi

test-upstream: cv3tiny-model  ## CosyVoice adapter tests on upstream's code and a tiny model
	CV3TINY_MODEL="$(CV3TINY_MODEL)" $(UPSTREAM_PYTHON) -m pytest -p no:cacheprovider \
		-m upstream tests/upstream

# The API suite with v3 on the CosyVoice engine (upstream's code, the tiny model built by
# cv3tiny-model), v1/v2 on an espeak predictor from this project's .venv. Slow on a CPU:
# the tiny model speaks 0.8 s of noise per text token. E2E_TESTS narrows it.
E2E_TESTS ?= tests/e2e
test-upstream-api: cv3tiny-model $(TEST_STAMP)  ## the e2e suite with v3 on upstream's code
	COSYVOICE_TEST_PROFILE=cosyvoice CV3TINY_MODEL="$(CV3TINY_MODEL)" PROJECT_BIN="$(abspath $(BIN))" \
		$(UPSTREAM_PYTHON) -m pytest -p no:cacheprovider -m "not quiet" $(E2E_TESTS)

lint: $(TEST_STAMP)        ## ruff check and format, mypy (strict for core/ and functions/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(TEST_STAMP)       ## the benchmarks under bench/
	$(BIN)/python -m bench.all

images:                    ## the API image with buildah, on a debootstrap Debian base (root)
	tools/images/build-api-image.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
