"""The wheel: what it holds, and, installed into a fresh virtual environment with no Rust toolchain
on PATH, the editable install's answers (import, `tttnn index build` of the packaged sample,
`tttnn search`, `tttnn index verify`).

CI builds the wheel once (`make wheel`, before the tests). Run alone, this module builds it only
when dist/ has none, or one older than the sources it is made of (a release build: minutes).
The environment sees the system's site-packages (torch and the rest are not installed twice),
and the test checks that `tttnn` is imported from the wheel, not from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from helpers import SAMPLE_TEST, SAMPLE_TRAIN

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
LIMIT = "200"  # documents of the sample indexed: 50 of code_python's 150, then legal_licenses

pytestmark = pytest.mark.slow


def _sources() -> list[Path]:
    files = [ROOT / "Cargo.toml", ROOT / "Cargo.lock", ROOT / "pyproject.toml"]
    files += list((ROOT / "rust").rglob("*.rs"))
    files += [
        p for p in (ROOT / "python" / "tttnn").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".so"
    ]  # fmt: skip
    return files


@pytest.fixture(scope="module")
def wheel() -> Path:
    wheels = sorted(DIST.glob("tttnn-*.whl"))
    newest = max(p.stat().st_mtime for p in _sources())
    if len(wheels) != 1 or wheels[0].stat().st_mtime < newest:
        subprocess.run(["make", "wheel"], cwd=ROOT, check=True)
        wheels = sorted(DIST.glob("tttnn-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_one_abi3_manylinux_file_without_tests_or_build_output(wheel: Path) -> None:
    name = wheel.name
    assert "-abi3-" in name and "manylinux_2_28_x86_64" in name, name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tags = [
            line.split(": ", 1)[1]
            for line in z.read(next(n for n in names if n.endswith(".dist-info/WHEEL")))
            .decode()
            .splitlines()
            if line.startswith("Tag: ")
        ]
    assert tags and all("-abi3-" in t for t in tags), tags
    assert [n for n in names if n.endswith(".so")] == ["tttnn/_tttnn.abi3.so"]
    for needed in ("tttnn/__init__.py", "tttnn/_tttnn.pyi", "tttnn/py.typed",
                   "tttnn/data/sample/train.jsonl.zst", "tttnn/data/sample/test.jsonl.zst"):  # fmt: skip
        assert needed in names, needed
    stray = [
        n for n in names
        if n.startswith(("tests/", "target/", "results/", "benches/", "rust/"))
        or "__pycache__" in n or n.endswith((".pyc", ".rs", ".orig", ".tmp"))
    ]  # fmt: skip
    assert not stray, stray


def _path_without_rust() -> str:
    """PATH with every directory that holds cargo or rustc left out."""
    keep = [
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any(os.path.exists(os.path.join(d, tool)) for tool in ("cargo", "rustc"))
    ]  # fmt: skip
    return os.pathsep.join(keep)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh environment with the wheel installed, and the environment variables to run it
    with: no Rust on PATH, no toolchain variables."""
    root = tmp_path_factory.mktemp("venv") / "env"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "RUSTC"))}
    env["PATH"] = os.pathsep.join([str(root / "bin"), _path_without_rust()])
    env.pop("PYTHONPATH", None)
    assert shutil.which("cargo", path=env["PATH"]) is None
    assert shutil.which("rustc", path=env["PATH"]) is None
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True)
    python = root / "bin" / "python"
    # no index, no dependencies: they come from the system's site-packages; --ignore-installed:
    # the checkout's editable tttnn there is the same version
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--no-deps", "--ignore-installed", str(wheel)],
        check=True, env=env, cwd=root,
    )  # fmt: skip
    print(f"\nfresh environment with the wheel: {time.perf_counter() - start:.1f} s")
    return python, env


def _tttnn(python: Path | str, args: list[str], env: dict[str, str] | None, cwd: Path) -> str:
    proc = subprocess.run([str(python), "-m", "tttnn", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, f"tttnn {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _job(python: Path | str, env: dict[str, str] | None, work: Path) -> list[dict]:
    """Build, verify, search: the rows `tttnn search --json` prints for the sample's test split."""
    work.mkdir()
    index = work / "index"
    out = _tttnn(python, ["index", "build", str(SAMPLE_TRAIN), "--out", str(index), "--limit",
                          LIMIT, "-q"], env, work)  # fmt: skip
    assert f"indexed {LIMIT} documents" in out, out
    out = _tttnn(python, ["index", "verify", str(index), "-q"], env, work)
    assert "verified" in out, out
    out = _tttnn(python, ["search", str(index), "--queries", str(SAMPLE_TEST), "-k", "5",
                          "--exact", "--json"], env, work)  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 12 and all(len(r["neighbors"]) == 5 for r in rows)
    return rows


def test_wheel_without_rust_answers_like_the_editable_install(venv, tmp_path: Path) -> None:
    python, env = venv
    where = subprocess.run(
        [str(python), "-c", "import tttnn, tttnn._tttnn as c; print(tttnn.__file__); "
         "print(c.__file__); print(tttnn.__version__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    site = python.parent.parent
    assert Path(where[0]).is_relative_to(site) and Path(where[1]).is_relative_to(site), where
    assert where[1].endswith("_tttnn.abi3.so")
    import tttnn

    assert where[2] == tttnn.__version__
    assert not Path(tttnn.__file__).is_relative_to(site)
    from_wheel = _job(python, env, tmp_path / "wheel")
    from_checkout = _job(sys.executable, None, tmp_path / "checkout")
    assert from_wheel == from_checkout  # the same neighbors with the same scores, bit for bit
