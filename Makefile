# Commands a newcomer types. `make test` is what CI runs (after installing, see .ci/run).
# `make test-fast` while working: the Python tests not marked `slow` (those that load SmolLM2,
# start Ray clusters, build the wheel or run whole evaluations), without lint or Rust tests.
PY ?= python3

.PHONY: install dev test test-fast lint rust-test py-test bench demo stubtest fmt \
	wheel-tools wheel wheel-check sdist-check device-wheels device-check

install:            ## build the release extension and install the package (editable)
	$(PY) -m pip install -e ".[dev,ray,lm-eval]"

dev:                ## rebuild the extension after a Rust change
	$(PY) -m pip install -e . --no-build-isolation --no-deps -q
	@# an abi3 build (_tttnn.abi3.so) is shadowed by an older per-version one: Python loads that first
	if [ -e python/tttnn/_tttnn.abi3.so ]; then rm -f python/tttnn/_tttnn.cpython-*.so; fi

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

test-fast:          ## the Python tests not marked slow (pytest -m "not slow")
	$(PY) -m pytest -q -m "not slow"

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

# --- wheels: one abi3 wheel (CPython >= 3.9) for manylinux_2_28 (glibc 2.28+), and the sdist ----
# zig (the `ziglang` package) links against that glibc's symbols, for the Rust and usearch's C++
# alike, on any build machine. A separate target directory keeps `make dev` builds apart.
DIST ?= dist
MANYLINUX ?= 2_28
WHEEL_TARGET ?= target/wheel
# -mpopcnt: numkong (usearch's distance kernels) calls _mm_popcnt_u64 inside AVX-512 functions
# whose target list lacks popcnt; GCC lets that pass, clang (zig cc) refuses it. Every x86-64 CPU
# since 2008 has POPCNT (it is in x86-64-v2).
MATURIN_WHEEL = CFLAGS_x86_64_unknown_linux_gnu=-mpopcnt \
	$(PY) -m maturin build --release --zig --compatibility manylinux_$(MANYLINUX)

wheel-tools:        ## what `make wheel` needs besides Rust: maturin, zig, the checkers
	$(PY) -m pip install -q "maturin>=1.9,<2" ziglang twine abi3audit check-wheel-contents auditwheel

wheel:              ## release wheel + sdist into dist/, then wheel-check (sdist-check: once)
	rm -rf $(DIST)/tttnn-*.whl $(DIST)/tttnn-*.tar.gz
	CARGO_TARGET_DIR=$(WHEEL_TARGET) $(MATURIN_WHEEL) --out $(DIST)
	$(PY) -m maturin sdist --out $(DIST)
	$(MAKE) wheel-check

wheel-check:        ## metadata, stable ABI, contents and platform tag of dist/
	$(PY) -m twine check --strict $(DIST)/tttnn-*.whl $(DIST)/tttnn-*.tar.gz
	abi3audit --strict --report $(DIST)/tttnn-*.whl
	check-wheel-contents $(DIST)/tttnn-*.whl
	auditwheel show $(DIST)/tttnn-*.whl
	@ls -l $(DIST)/tttnn-*

sdist-check:        ## build the wheel again from the sdist alone (fresh target: a full build)
	rm -rf $(DIST)/sdist-build && mkdir -p $(DIST)/sdist-build
	tar -xzf $(DIST)/tttnn-*.tar.gz -C $(DIST)/sdist-build
	cd $(DIST)/sdist-build/tttnn-* && CARGO_TARGET_DIR=../target $(MATURIN_WHEEL) --out ..
	$(PY) -c "$$SAME_WHEEL" $(DIST)/tttnn-*.whl $(DIST)/sdist-build/tttnn-*.whl

# Two wheels are the same build: same name (tags), same files, same bytes but for the compiled
# extension, the RECORD that hashes it and the SBOM (a new serial number, the time and the build
# directory each build), whose components must be the same.
define SAME_WHEEL
import json, sys, zipfile
a, b = (zipfile.ZipFile(p) for p in sys.argv[1:3])
name = lambda z: z.filename.rsplit("/", 1)[-1]
assert name(a) == name(b), (name(a), name(b))
assert sorted(a.namelist()) == sorted(b.namelist()), set(a.namelist()) ^ set(b.namelist())
differ = [n for n in a.namelist() if a.read(n) != b.read(n)]
sboms = [n for n in differ if n.endswith(".cyclonedx.json")]
parts = lambda z, n: sorted((c["name"], c["version"]) for c in json.loads(z.read(n))["components"])
assert all(parts(a, n) == parts(b, n) for n in sboms), sboms
assert all(n.endswith((".so", "RECORD")) for n in differ if n not in sboms), differ
print(f"same wheel: {name(a)}, {len(a.namelist())} files; differing bytes: {differ}")
endef
export SAME_WHEEL

# --- the device check on a machine without Rust or network (docs/install.md) --------------------
# The folder a GPU machine receives: the tttnn wheel and the small dependencies that a PyTorch +
# transformers + peft image may lack, for that machine's Python (DEVICE_PYTHON=3.12 ...).
DEVICE_PYTHON ?= $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
DEVICE_WHEELS ?= $(DIST)/device-wheels

device-wheels:      ## dist/device-wheels: the wheel + zstandard, click, tqdm, matplotlib and its deps
	rm -rf $(DEVICE_WHEELS) && mkdir -p $(DEVICE_WHEELS)
	cp $(DIST)/tttnn-*.whl $(DEVICE_WHEELS)/
	$(PY) -m pip download -q --no-deps --only-binary :all: -d $(DEVICE_WHEELS) \
		--python-version $(DEVICE_PYTHON) --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		zstandard click tqdm matplotlib contourpy cycler fonttools kiwisolver pillow \
		pyparsing python-dateutil six
	@du -sh $(DEVICE_WHEELS)

device-check:       ## the device check on this machine (CPU here: smaller settings)
	$(PY) benches/device_check.py --out $(or $(OUT),device-check)
