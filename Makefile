# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean venv

venv: $(STAMP)

# torch first, pinned (a CPU wheel on disk; unpinned it pulls a multi-GB CUDA build), then the rest
# under the same constraints so nothing can upgrade it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,onnx]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prunekit demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -p no:cacheprovider

bench: $(STAMP)
	@echo "see benchmarks/README.md; e.g. $(BIN)/python benchmarks/surgery.py"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
