"""Atomic outputs: write to a temporary name next to the target, then rename.

A crash therefore never leaves a file (or directory) that looks complete. A killed writer does
leave its temporary behind; the name says whose it is — `.<target>.tmp-<pid>@<host>-<random>` —
so `remove_stale_temps(dir)` (run at the next start of the program that writes there) removes the
temporaries of writers that are no longer running, and never one of a live process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# <host> is optional: names written before it was added count as this host's.
_TMP = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9_.]*))?-[a-z0-9_]+$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64]


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{_host()}-{next(tempfile._get_candidate_names())}")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 probes without signalling)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass
class StaleTemps:
    removed: list[Path] = field(default_factory=list)
    restored: list[tuple[Path, Path]] = field(default_factory=list)  # (temp, target) renamed into place
    foreign: list[Path] = field(default_factory=list)  # written on another host: left alone

    def describe(self) -> list[str]:
        """One line per kind of action taken, for the log."""
        lines = []
        if self.removed:
            lines.append(f"removed {len(self.removed)} temporary file(s) left by killed writers in "
                         f"{self.removed[0].parent}: {', '.join(p.name for p in self.removed)}")
        for tmp, target in self.restored:
            lines.append(f"restored {target} from {tmp.name} (a finished write whose rename was cut off)")
        if self.foreign:
            lines.append(f"left {len(self.foreign)} temporary file(s) written on another host alone (a process there "
                         f"may still be writing; remove them once none is): {', '.join(str(p) for p in self.foreign)}")
        return lines


def remove_stale_temps(directory: str | os.PathLike, complete: Callable[[Path], bool] | None = None) -> StaleTemps:
    """Remove the temporaries that dead writers left in `directory` (not recursive).

    Temporaries of a live process (same host, pid running) are kept, and so are those written on
    another host (a process there may still be writing; they are reported). With `complete`, a
    stale temporary directory for which it returns True while its target is missing is renamed
    into place instead: a writer killed while swapping a finished directory in
    (`atomic_directory(overwrite=True)`) loses nothing.
    """
    out = StaleTemps()
    d = Path(directory)
    if not d.is_dir():
        return out
    host = _host()
    entries = []
    for entry in d.iterdir():
        m = _TMP.match(entry.name)
        if m is None:
            continue
        if m["host"] is not None and m["host"] != host:
            out.foreign.append(entry)
        elif not process_alive(int(m["pid"])):
            try:
                entries.append((entry.lstat().st_mtime, entry, d / m["target"]))
            except FileNotFoundError:  # removed meanwhile
                pass
    for _, entry, target in sorted(entries, key=lambda e: -e[0]):  # newest first: it is the one restored
        is_dir = entry.is_dir() and not entry.is_symlink()
        if complete is not None and is_dir and not os.path.lexists(target) and complete(entry):
            os.replace(entry, target)
            out.restored.append((entry, target))
        elif is_dir:
            shutil.rmtree(entry, ignore_errors=True)
            out.removed.append(entry)
        else:
            entry.unlink(missing_ok=True)
            out.removed.append(entry)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name; it appears at `path` only when complete.

    With `overwrite`, an existing directory at `path` is replaced (removed only after the new one
    is complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = _tmp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
