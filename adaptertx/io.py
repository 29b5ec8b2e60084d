"""Atomic file and folder writes, the user cache location, and one-line write errors.

Every file adaptertx writes goes through here: a half-written file or folder never appears
under its final name, so an interrupted run or a full disk loses nothing that was there.
Files and folders are created with the permissions the umask gives (as ``open`` and ``mkdir``
would), not the private ones of :mod:`tempfile`. A write that fails for want of space (or of
permission, or on a read-only disk) is an :class:`AdaptertxError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from adaptertx.errors import AdaptertxError

#: errno values of a write that cannot succeed until the user acts (space, quota, permissions).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
#: Prefix and suffix of the temporary names :func:`atomic_write_bytes` and :func:`atomic_dir` use.
TEMP_PREFIX, TEMP_SUFFIX, OLD_MARK = ".", ".tmp", ".old-"


def cache_dir() -> Path:
    """The adaptertx cache: ``$ADAPTERTX_CACHE`` or ``$XDG_CACHE_HOME/adaptertx`` (``~/.cache``)."""
    env = os.environ.get("ADAPTERTX_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adaptertx"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of the temporary names an interrupted write leaves behind."""
    return name.startswith(TEMP_PREFIX) and (name.endswith(TEMP_SUFFIX) or OLD_MARK in name)


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_failure(e: BaseException) -> str | None:
    """Why a write failed, in words, when ``e`` (an ``OSError`` or a library's wrapper of one, such
    as safetensors' "No space left on device (os error 28)") is a failure the user must act on."""
    code = getattr(e, "errno", None)
    if code is None:
        text = str(e)
        code = next((c for c in WRITE_ERRNOS if f"(os error {c})" in text), None)
    if code not in WRITE_ERRNOS:
        return None
    return {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}.get(code, "permission denied")


def write_error(e: BaseException, path: str | os.PathLike) -> AdaptertxError | None:
    """The one-line error of a write to ``path`` that failed with ``e`` (see :func:`write_failure`),
    or ``None`` when ``e`` is no such failure."""
    why = write_failure(e)
    if why is None:
        return None
    return AdaptertxError(f"could not write {path}: {why}; nothing was half-written there, free space "
                          f"or choose another folder and run the same command again")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write to ``path`` (no space, no permission) into a one-line :class:`AdaptertxError`."""
    try:
        yield
    except AdaptertxError:
        raise
    except Exception as e:
        clear = write_error(e, path)
        if clear is None:
            raise
        raise clear from None


def _mkdir(path: Path) -> None:
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    _mkdir(path.parent)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str, *, sync: bool = False) -> None:
    """Append ``line`` (one line of text, without its newline) to ``path``; a crash can tear
    only the last line, which the readers of such logs ignore. ``sync``: on disk when it returns."""
    with writing(path), open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())


def _share(root: Path) -> None:
    """Give ``root`` and everything under it the permissions the umask gives new files."""
    mask = umask()
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` only on success.

    Yields the temporary folder to fill. If ``path`` already exists it is replaced only
    after the new folder is complete; on any error the temporary folder is removed and
    ``path`` is left as it was. A failed write for want of space or permission is an
    :class:`AdaptertxError` naming ``path``.
    """
    path = Path(path)
    _mkdir(path.parent)
    with writing(path):
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        with writing(path):
            yield tmp
            _share(tmp)
            if path.exists():
                old = path.with_name(f"{TEMP_PREFIX}{path.name}{OLD_MARK}{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_dir(path: str | os.PathLike) -> None:
    """Remove the folder ``path`` so that an interruption leaves either all of it or none of it
    under its name (it is renamed away first)."""
    path = Path(path)
    if not path.exists():
        return
    old = path.with_name(f"{TEMP_PREFIX}{path.name}{OLD_MARK}{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    shutil.rmtree(old, ignore_errors=True)
