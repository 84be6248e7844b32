"""Files and folders a run writes: atomic writes, output checks, and a run folder's lock.

Every command that writes goes through these three, so every way a write can fail ends in one
:class:`OutputError` line naming the path and the problem, and nothing is left half-written:

* :func:`atomic_write` / :func:`atomic_path` — write to ``.NAME.tmp-PID`` in the same folder,
  ``fsync``, ``os.replace`` (POSIX rename is atomic: after a ``kill -9`` or a full disk the file
  is either absent or complete). The file gets the permissions the umask gives
  (``0o666 & ~umask``), as ``open`` would — not the 0600 of :func:`tempfile.mkstemp`.
* :func:`check_output_folder` — before any work: the folder is a folder (or can be created),
  does not lie under a file, and is writable.
* :func:`hold_folder` — an advisory ``fcntl.flock`` on ``FOLDER/lock`` for the whole run (a
  training run, a sweep); a second process is refused with :class:`FolderBusy` naming the folder
  and the holder's pid. The lock is released by the kernel when its holder dies, so a killed run
  never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

__all__ = ["OutputError", "FolderBusy", "atomic_write", "atomic_path", "check_output_folder", "hold_folder", "umask_mode",
           "tmp_name"]


class OutputError(RuntimeError):
    """A file or folder cannot be written; ``str(err)`` is one line naming it and the problem."""


class FolderBusy(OutputError):
    """Another process holds the folder's lock (the message names the folder and its pid)."""


def umask_mode(mode: int = 0o666) -> int:
    """``mode & ~umask``: the permissions ``open`` gives a new file."""
    # os.umask can only be read by setting it; it is restored at once.
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _why(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "the disk is full"
    return err.strerror or str(err)


def tmp_name(path: Path) -> Path:
    """The temporary sibling ``.NAME.tmp-PID`` an atomic write goes through."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that takes a file name (soundfile,
    matplotlib); on success it is fsynced and renamed onto ``path`` with the umask's permissions,
    on any error removed. OS errors become an :class:`OutputError` naming ``path``."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, umask_mode())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_why(err)}") from None


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); an :class:`OutputError` naming
    the file on any error (disk full, no permission), with no partial or temporary file left."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def check_output_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work, that ``folder`` can hold a run's output: it is a folder or does not
    exist yet, it does not lie under a file, and its nearest existing ancestor is writable.
    Raises :class:`OutputError` with one line ``FLAG FOLDER: problem``; creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder}: exists and is not a folder")
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{flag} {folder}: lies under {parent}, which is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{flag} {folder}: {parent} is not writable (permission denied)")
            break
    return folder


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, what: str = "run", hint: str = "wait for it or use another --out",
                name: str = "lock") -> Iterator[None]:
    """Hold ``FOLDER/NAME`` (advisory ``flock``; default ``lock``) for the duration; if another
    process holds it, raise :class:`FolderBusy`: ``FOLDER is in use by another WHAT (pid P); HINT``."""
    folder = Path(folder)
    path = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, umask_mode())
    except OSError as err:
        raise OutputError(f"cannot create {path}: {_why(err)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(f"{folder} is in use by another {what} (pid {holder}); {hint}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
