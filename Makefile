# Commands a newcomer types. `make test` is what CI runs (after installing, see .ci/run).
PY ?= python3

.PHONY: install dev test lint rust-test py-test bench demo stubtest fmt

install:            ## build the release extension and install the package (editable)
	$(PY) -m pip install -e ".[dev,ray,lm-eval]"

dev:                ## rebuild the extension after a Rust change
	$(PY) -m pip install -e . --no-build-isolation --no-deps -q

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	ruff check python tests benches
	$(PY) -m mypy python/tttnn
	ruff format --check python tests benches

stubtest:
	$(PY) -m mypy.stubtest tttnn._tttnn

rust-test:
	cargo test --release

py-test:
	$(PY) -m pytest -q

test: lint rust-test stubtest py-test

fmt:
	cargo fmt --all
	ruff format python tests benches
	ruff check --fix python tests benches

bench:              ## criterion benches + Python peers (takes a while)
	cargo bench
	$(PY) benches/bench_knn.py --quick
	$(PY) benches/bench_hnsw_metrics.py
	$(PY) benches/bench_pack.py

demo:
	tttnn demo
