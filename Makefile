# sppdet: `make demo` runs the whole chain on the built-in dataset, `make test` runs the tests.
# Both create the virtual environment and install the project first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
WORK   ?= sppdet-work

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import torchvision.ops, cv2.ximgproc"
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/python benchmarks/demo.py --workdir $(WORK) --images 400

# Every benchmark from scratch in $(WORK)/bench, then BENCHMARKS.md and benchmarks/speed.png from
# that run (benchmarks/report.py). One torch thread by default: on shared cores torch's OpenMP
# threads spin-wait on each other; `make bench BENCH_THREADS=2` on a quiet machine.
BENCH_THREADS ?= 1

bench: install
	OMP_NUM_THREADS=$(BENCH_THREADS) $(BIN)/python benchmarks/report.py --workdir $(WORK)/bench --fresh \
	    --command "make bench BENCH_THREADS=$(BENCH_THREADS)"

clean:
	rm -rf $(VENV) $(WORK) .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
