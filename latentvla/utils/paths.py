"""Checks of user-supplied paths that run before any heavy work.

- `check_writable_dir(path, what)`: an output location (a directory that may not exist yet) can be
  created and written: its nearest existing ancestor is a directory in which a file can be made.
  Catches a read-only file system, missing permissions and a regular file on the way in seconds,
  instead of after the model is loaded and the data indexed.
- `entry_problem(path)`: why an existing directory entry cannot be used as a directory (a symlink
  loop, a broken symlink, a regular file), for messages that would otherwise say "not found".
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from latentvla.errors import LatentVLAError, os_reason


def entry_problem(path: str | os.PathLike, want_dir: bool = True) -> str | None:
    """None when `path` is a usable directory (`want_dir=False`: file) or does not exist at all; else
    what is wrong with it."""
    p = Path(path)
    try:
        os.stat(p)
    except OSError as e:
        if not os.path.lexists(p):
            return None  # plainly missing: the caller's own "not found" message fits
        if os.path.islink(p) and e.errno == errno.ENOENT:
            return f"broken symbolic link (to {os.readlink(p)!r})"
        return os_reason(e)
    if want_dir and not p.is_dir():
        return "not a directory"
    if not want_dir and p.is_dir():
        return "a directory, not a file"
    return None


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise LatentVLAError (naming `what` and the path) unless `path` can be created and written."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        if os.path.lexists(probe):  # a dangling link or a loop: exists() follows it
            raise LatentVLAError(f"{what} {path}: {probe}: {entry_problem(probe)}")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == p else f" ({probe} is a regular file, so nothing can be created below it)"
        raise LatentVLAError(f"{what} {path}: not a directory{where}")
    try:
        # An unnamed temporary file (O_TMPFILE where supported): leaves nothing behind, even if killed.
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        where = "" if probe == p else f" (in {probe}, where it would be created)"
        raise LatentVLAError(f"{what} {path}: cannot write{where}: {os_reason(e)}") from None
