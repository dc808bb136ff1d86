# Every target that needs Python creates .venv first; a fresh clone needs
# nothing but `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test test-fast lint fmt bench board e2e clean fashion-mnist mlp-tuning postgresql seeds

venv: $(STAMP)

# uv installs the same packages as pip, from the same index, in less than half
# the time (16 s against 37 s on a fresh clone here: unpacking ~2 GB of wheels,
# bytecode compiled in parallel); pip does it where uv cannot be installed.
# The virtualenv is made without pip and the system's pip puts uv in it
# (`pip --python`, pip >= 22.3), which then installs pip with the rest:
# 2.1 s against 4.3 s for venv's own pip and pip installing uv. Without a
# system pip, venv's own (ensurepip) installs uv, or everything.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	test -x $(BIN)/uv || $(PYTHON) -m pip --python $(BIN)/python install -q uv 2>/dev/null || \
	  { $(BIN)/python -m ensurepip --default-pip >/dev/null && $(BIN)/python -m pip install -q uv; } || true
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python pip -e '.[cpu,dev]' || \
	  { { $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --default-pip >/dev/null; } && \
	    $(BIN)/python -m pip install -q -e '.[cpu,dev]'; }
	touch $(STAMP)

demo: venv
	$(BIN)/pipeline-train --flagfile=flags/demo.cfg --model=logreg --run_name=demo-logreg-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/pipeline-train --flagfile=flags/demo.cfg --model=mlp --run_name=demo-mlp-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/pipeline-train --flagfile=flags/demo.cfg --model=cnn --run_name=demo-cnn-$$(date +%Y%m%d-%H%M%S)
	@echo
	@echo "Open the runs in TensorBoard:  $(BIN)/tensorboard --logdir logs --host 127.0.0.1"

# tests/test_study_postgres.py starts a private PostgreSQL server (Debian's
# package) for two sweep workers sharing one study.
# Tests start ~150 Python processes: with PYTHONDONTWRITEBYTECODE set (this
# machine's environment sets it) each compiled pipeline/ again (~0.05 s of
# CPU) and each pytest worker rewrote every test module (~0.7 s), so the
# suite runs with bytecode written (__pycache__/ is ignored by git).
TEST_ENV := env -u PYTHONDONTWRITEBYTECODE
# Three pytest workers on the two cores: the suite is CPU-bound, but its tests
# also wait (a peer's timeout, a server's start, a kill's moment), and a third
# worker fills those waits. Two interleaved pairs at f51060b (a 2-core AMD EPYC
# VM), the pytest command below: 282.3 / 283.1 s with three, 290.2 / 311.4 s with two.
test: venv postgresql
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder

# The edit loop: everything but the tests marked `slow` (real multi-process
# sweeps, distributed workers, kills, full disks, servers); CI runs `make test`.
test-fast: venv
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder -m "not slow"

postgresql:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql; }

# tests/test_style.py: no function in pipeline/ over 80 lines (ruff has no such rule).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests/test_style.py

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Full-size Fashion-MNIST is a Debian package; benchmarks need it.
fashion-mnist:
	test -f $(FASHION) || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

# Speed, accuracy, start-up, memory and event-size figures (not part of
# `make test`): ~12-15 min on 2 cores. docs/performance.md's "Results" is this
# target's output (build/bench/bench.txt keeps a copy; scripts/bench_doc.py
# copies it there, also when a benchmark failed, which the output names).
BENCH_OUT := build/bench
bench: SHELL := /bin/bash
bench: .SHELLFLAGS := -o pipefail -c
bench: venv fashion-mnist
	mkdir -p $(BENCH_OUT)
	{ \
	  echo "make bench at commit $$(git rev-parse --short HEAD)$$(git diff --quiet HEAD -- pipeline benchmarks || echo ' (+ uncommitted changes)'), $$(date -u '+%Y-%m-%d %H:%M') UTC, $$(nproc) cores, load average $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	  failed=""; \
	  for bench in "flops" "throughput --json_out=$(BENCH_OUT)/throughput.json" \
	      "input_pipeline --throughput_json=$(BENCH_OUT)/throughput.json" \
	      profile startup sweep accuracy footprint; do \
	    $(BIN)/python -m benchmarks.$$bench || failed="$$failed $${bench%% *}"; \
	  done; \
	  echo "load average at the end $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	  if [ -n "$$failed" ]; then echo "make bench: exited non-zero:$$failed"; exit 1; fi; \
	} 2>&1 | grep --line-buffered -E -v '^[IW][0-9]{4} |absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|rebuild TensorFlow|UserWarning: .shuffle=True|data_adapters.get_data_adapter' \
	  | tee $(BENCH_OUT)/bench.txt; \
	status=$$?; $(BIN)/python scripts/bench_doc.py || status=1; exit $$status

# Every tutorial flagfile trained by its own recipe on the bundled digits (and
# the MLP rows with plain Keras fit): prints the table and writes it into
# WORKSPACE.md and README.md. A benchmark, not part of `make test`.
seeds: venv
	$(BIN)/python -m benchmarks.seeds

board: venv
	$(BIN)/pipeline-board --logdir logs

# Every TensorBoard tab in a real browser (e2e/): Selenium drives Debian's
# chromium through chromium-driver (installed here if missing; no browser
# download); screenshots into docs/, their captions and docs/screenshots.md
# name the commit (e2e/conftest.py). CI runs it.
e2e: venv
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }
	$(BIN)/python -m pytest -q -p no:cacheprovider e2e

# The MLP tuning table: 8 variants x 3 seeds, then the comparison.
mlp-tuning: venv
	$(BIN)/pipeline-sweep --flagfile=flags/sweeps/mlp_tuning.cfg
	$(BIN)/pipeline-compare logs/mlp_tuning --plot=logs/mlp_tuning/curves.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
