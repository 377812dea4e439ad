"""Where poetgen keeps its data and finds its shipped files, and safe file writes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ENV_DATA = "POETGEN_DATA"


def checkout_root() -> Path | None:
    """The repository root when poetgen runs from a source checkout (editable install), else None."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "corpus").is_dir():
        return root
    return None


def source_commit() -> str | None:
    """The git commit of a source checkout poetgen runs from (with "+dirty" when files changed), else None."""
    import subprocess

    root = checkout_root()
    if root is None or not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def user_data_dir() -> Path:
    """The per-user data folder used by a wheel install (XDG on Linux, the usual places elsewhere)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "poetgen"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The prepared-corpus folder: the argument, else $POETGEN_DATA, else corpus/ in a checkout,
    else the per-user data folder."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser().resolve()
    root = checkout_root()
    if root is not None:
        return root / "corpus"
    return user_data_dir() / "corpus"


def shipped_file(name: str) -> Path | None:
    """A file shipped with poetgen (the default model): checkpoints/ of a source checkout, else the
    copy installed with the package; None when neither exists."""
    root = checkout_root()
    if root is not None and (root / "checkpoints" / name).is_file():
        return root / "checkpoints" / name
    try:
        from importlib import resources

        installed = resources.files("poetgen.checkpoints") / name
        return Path(str(installed)) if installed.is_file() else None
    except (ModuleNotFoundError, TypeError):
        return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file (through links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside `target`; on success fsync it and rename it over `target`, on
    error remove it. Readers never see a half-written file; a crash leaves the previous file intact.
    A symlink is followed: its target is replaced and the link stays."""
    link = Path(target)
    target = Path(os.path.realpath(target))
    if target.exists() and not target.is_file():  # never replace a device, FIFO or folder with a file
        raise OSError(errno.EINVAL, "not a regular file", str(target))
    if link.is_symlink() and not target.parent.is_dir():  # a dangling link makes no folders where it points
        raise OSError(errno.ENOENT, "a link to a folder that does not exist", str(link))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    # the replaced file's permissions (a private file stays private), else the usual ones (mkstemp makes 0600)
    os.chmod(tmp, target.stat().st_mode & 0o7777 if target.is_file() else 0o666 & ~umask)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `target` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def write_output(target: str | os.PathLike, text: str) -> int:
    """Write a command's output as shell redirection would, but safely: a regular file (or a new one)
    is replaced atomically, through a symlink if it is one; a device, FIFO or other special file is
    written into directly. Returns how many other hard links the replaced file had: they keep the old
    text (a whole new file takes the name), which the caller should say."""
    real = Path(os.path.realpath(target))
    if real.exists() and not real.is_file():
        with open(real, "w", encoding="utf-8") as f:
            f.write(text)
        return 0
    links = real.stat().st_nlink - 1 if real.is_file() else 0
    atomic_write_text(target, text)  # the link itself: atomic_path follows it, and checks where it points
    return links


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, busy: Exception):
    """Hold an exclusive lock on `folder` (a .lock file in it); raise `busy` at once when another
    process holds it. The lock goes with the process, even on SIGKILL. Re-entrant within a process:
    a caller can hold it around a check and the work the check allows (no other process between)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _HELD:
        yield
        return
    f = open(folder / ".lock", "a+")  # noqa: SIM115 - held open for the lock's life
    try:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows
            import msvcrt

            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            except OSError:
                raise busy from None
        except OSError:
            raise busy from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        f.close()


_HELD: set[str] = set()  # the folders this process holds the lock of


def file_sha256(path: Path) -> str:
    """The sha256 of a file's contents, read a MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
