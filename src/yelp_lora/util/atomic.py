"""Writes that appear only complete: a temporary name, fsync, then rename."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from yelp_lora.errors import SaveError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Rust-backed writers (tokenizers, safetensors) raise a plain Exception that carries the
# OS error only in its text: "File too large (os error 27)" or "Os { code: 28, ... }".
_RUST_OS_ERROR = re.compile(r"os error (\d+)|Os \{ code: (\d+)")


@contextlib.contextmanager
def save_errors(target: str | Path) -> Iterator[None]:
    """Turn an I/O failure while writing `target` into one SaveError naming it and the OS reason."""
    try:
        yield
    except SaveError:
        raise
    except Exception as err:
        if isinstance(err, OSError) and err.errno is not None:
            code = err.errno
        elif match := _RUST_OS_ERROR.search(str(err)):
            code = int(match.group(1) or match.group(2))
        else:
            raise
        raise SaveError(code, f"cannot write {target}: {os.strerror(code)}; any previous copy is unchanged") from None


def check_output_dir(path: str | Path, what: str) -> None:
    """Fail now, in one SaveError naming `path`, if it cannot become a directory to write into, rather
    than after minutes of work; creates nothing."""
    path = Path(path).absolute()
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as err:  # a parent that cannot be searched
        raise SaveError(err.errno or errno.EACCES, f"{what} {path}: {err.strerror}") from None
    if existing == path and not path.is_dir():
        raise SaveError(errno.ENOTDIR, f"{what} {path} exists and is not a directory")
    if not existing.is_dir():
        raise SaveError(errno.ENOTDIR, f"{what} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SaveError(errno.EACCES, f"{what} {path}: {existing} is not writable")


def _fsync_tree(root: Path) -> None:
    # mkdtemp/mkstemp create private (0700/0600) entries; give the result ordinary permissions.
    mask = _umask()
    for path in sorted(root.rglob("*")) + [root]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # directory fsync is not allowed everywhere
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_dir(staging: Path, target: Path) -> None:
    """fsync a finished directory and rename it to `target`, replacing any previous one whole."""
    _fsync_tree(staging)
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


# flock errors that mean the file system keeps no locks (NFS without a lock daemon, some FUSE mounts).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


@contextlib.contextmanager
def exclusive(lock: str | Path, on_wait: Callable[[], None] | None = None, *, optional: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on the file `lock`, created if missing and left in
    place, so that processes about to write the same thing wait for the first instead of racing it;
    `on_wait` is called first if another process holds it (raising there refuses instead). Where the file system keeps no locks, an
    `optional` lock goes on without one (for writes that are atomic anyway); any other is a SaveError."""
    lock = Path(lock)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        # Read-only: a lock file another user created stays usable wherever the directory is shared.
        descriptor = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as err:
        raise SaveError(err.errno, f"cannot write {lock}: {err.strerror}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()  # may raise, to refuse rather than wait
            fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError as err:
        if not (optional and err.errno in _NO_LOCKS):
            os.close(descriptor)
            raise SaveError(err.errno, f"cannot lock {lock}: {err.strerror}") from None
    except BaseException:
        os.close(descriptor)
        raise
    try:
        yield
    finally:
        os.close(descriptor)  # closing it releases the lock


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    with save_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield staging
            publish_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    with save_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
