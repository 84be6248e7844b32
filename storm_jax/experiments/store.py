"""The sweep store: one atomically renamed file per finished point, under ``--out``.

Why one file per point rather than SQLite. A point's result is written once and never changed;
readers only need "all finished points". A file written to ``NAME.tmp-PID`` in the same folder,
flushed, ``fsync``-ed and then ``os.replace``-d onto ``NAME.npz`` is either absent or complete
after a ``kill -9`` or a power cut (POSIX rename is atomic), with no journal to recover. Files of
different processes never collide (a point has one name), so a sweep split over devices or hosts
writes into one folder — or into several that are merged by copying — without a database server
or a shared lock on a single file. Each file holds the point's scalars *and* its arrays (the E4
solutions the strong errors are computed from), so tables, plots and the report are pure functions
of the folder.

Layout of an experiment folder ``OUT/<experiment>/``::

    settings.json           the settings the points were computed with (refuses others)
    points/<id>.npz         finished points: ``row`` (JSON of the point and its scalars) + arrays
    failed/<id>.json        points that raised (stage and message); the sweep went on
    record.json             config, package versions, device, wall times (per invocation)
    lock                    advisory lock (fcntl) held by the running sweep
    tables/, figures/       derived from points/ (rebuilt at any time)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..files import FolderBusy, OutputError, atomic_write, hold_folder

__all__ = ["Store", "StoreError", "SettingsMismatch", "FolderBusy", "point_id", "atomic_write", "write_json"]


class StoreError(OutputError):
    """An experiment folder cannot be used (the message names the folder and the problem)."""


class SettingsMismatch(StoreError):
    """``--out`` holds points computed with other settings."""


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`atomic_write` of ``obj`` as indented JSON."""
    return atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def point_id(point: Mapping[str, Any]) -> str:
    """A file name for a point: its fields in order (``u003_p1_m1.03``) plus a short hash of
    the canonical JSON (so two points never share a name even after rounding)."""
    parts = []
    for k, v in point.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        parts.append(f"{k}{v}")
    stem = "_".join(parts).replace("/", "-").replace(" ", "")[:120]
    digest = hashlib.sha1(_canonical(dict(point)).encode()).hexdigest()[:8]
    return f"{stem}_{digest}"


def _diff(stored: Mapping, given: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(given)):
        a, b = stored.get(k, "<absent>"), given.get(k, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{k}.")
        elif _canonical(a) != _canonical(b):
            out.append(f"{prefix}{k}: stored {_canonical(a)}, given {_canonical(b)}")
    return out


class Store:
    """An experiment folder (see module doc). Open it with :meth:`open`; hold :meth:`lock` while
    writing points."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, root: str | os.PathLike, settings: Mapping[str, Any], *, create: bool = True) -> "Store":
        """Open (or create) ``root`` for ``settings``; refuse a folder made with other settings
        with a :class:`SettingsMismatch` naming every differing setting."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} exists and is not a folder")
        for parent in root.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise StoreError(f"{root} lies under {parent}, which is a file")
                break
        store = cls(root)
        file = root / "settings.json"
        settings = json.loads(_canonical(dict(settings)))
        if file.is_file():
            try:
                stored = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise StoreError(f"{file}: unreadable ({err}); delete the folder to start again") from None
            diff = _diff(stored, settings)
            if diff:
                raise SettingsMismatch(
                    f"{root} holds points computed with other settings ({'; '.join(diff)}); "
                    "use another --out or the same arguments"
                )
        elif create:
            if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
                raise StoreError(f"{root} is not empty and holds no settings.json: not an experiment folder")
            write_json(file, settings)
        else:
            raise StoreError(f"{root}: no experiment here (no settings.json)")
        store._clean_tmp()
        return store

    @property
    def settings(self) -> dict:
        return json.loads((self.root / "settings.json").read_text())

    def _clean_tmp(self):
        # Leftovers of a process killed between write and rename (never complete files).
        for folder in (self.root, self.root / "points", self.root / "failed"):
            if folder.is_dir():
                for p in folder.glob(".*.tmp-*"):
                    pid = p.name.rsplit("-", 1)[-1]
                    if not (pid.isdigit() and _alive(int(pid))):
                        with contextlib.suppress(OSError):
                            p.unlink()

    # -------------------------------------------------------------------------------- locking

    def lock(self, share: int = 0):
        """Hold the folder's advisory lock (:func:`storm_jax.files.hold_folder`); a second process
        is refused with :class:`FolderBusy` naming the folder and the holder's pid. Share ``i > 0``
        of a sweep split over processes holds ``lock.i`` instead (share 0 holds ``lock``), so the
        processes of one sweep run side by side and a second copy of any of them is refused."""
        return hold_folder(self.root, "sweep", name="lock" if share == 0 else f"lock.{share}")

    # -------------------------------------------------------------------------------- points

    def _file(self, pid: str) -> Path:
        return self.root / "points" / f"{pid}.npz"

    def done_ids(self) -> set[str]:
        """Ids of finished points (stored or failed)."""
        ids = set()
        for sub, suffix in (("points", ".npz"), ("failed", ".json")):
            folder = self.root / sub
            if folder.is_dir():
                ids |= {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")}
        return ids

    def put(self, point: Mapping[str, Any], row: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> None:
        """Store a finished point: its fields, its scalar results ``row`` and optional arrays."""
        buf = io.BytesIO()
        record = {"point": dict(point), "row": dict(row)}
        payload = {f"a_{k}": np.asarray(v) for k, v in (arrays or {}).items()}
        # Field order is kept (not sorted): point_id of a read-back point names the same file.
        text = json.dumps(record, separators=(",", ":"), default=_json_default)
        np.savez(buf, _record=np.frombuffer(text.encode(), np.uint8), **payload)
        atomic_write(self._file(point_id(point)), buf.getvalue())

    def fail(self, point: Mapping[str, Any], stage: str, message: str) -> None:
        """Record a point that failed (the sweep goes on; the report lists it)."""
        write_json(self.root / "failed" / f"{point_id(point)}.json", {"point": dict(point), "stage": stage, "message": message})

    def rows(self) -> list[dict]:
        """Every finished point as ``{**point, **row}``, in file-name order (deterministic)."""
        return [{**rec["point"], **rec["row"]} for rec, _ in self.records()]

    def records(self, with_arrays: bool = False) -> list[tuple[dict, dict]]:
        """``[(record, arrays)]`` of the stored points (``arrays`` empty unless asked for)."""
        folder = self.root / "points"
        out = []
        if not folder.is_dir():
            return out
        for p in sorted(folder.glob("*.npz")):
            if p.name.startswith("."):
                continue
            try:
                with np.load(p) as z:
                    rec = json.loads(z["_record"].tobytes().decode())
                    arrays = {k[2:]: z[k] for k in z.files if k.startswith("a_")} if with_arrays else {}
            except Exception as err:  # a foreign or damaged file: name it
                raise StoreError(f"{p}: damaged point file ({err}); delete it to recompute the point") from None
            out.append((rec, arrays))
        return out

    def failures(self) -> list[dict]:
        folder = self.root / "failed"
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if not p.name.startswith(".")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
