"""User-facing errors.

Raise `LatentVLAError` for anything a user can fix (bad path, bad flag, malformed file). The CLI
prints its message on one line and exits with status 2 instead of showing a traceback. The
message must name the file / field and what was expected.

Operating-system errors (`OSError`: a file the process may not read, a read-only or full disk, a
regular file where a directory belongs, a symlink loop) are turned into the same one-line form by
`format_error`, the one place that does so: the CLI calls it for every error it prints.
"""

from __future__ import annotations

import errno
import re


class LatentVLAError(Exception):
    """An error caused by user input (paths, flags, files); the message says how to fix it."""


# What to tell the user for the OS errors that user-supplied paths cause; others use strerror.
_OS_REASONS = {
    errno.EACCES: "permission denied (this process may not access it; check its permissions and owner)",
    errno.EPERM: "operation not permitted (check its permissions and owner)",
    errno.EROFS: "read-only file system (choose a writable location)",
    errno.ENOTDIR: "not a directory (a part of the path is a regular file)",
    errno.EISDIR: "is a directory (expected a file)",
    errno.ENOENT: "not found",
    errno.ELOOP: "symbolic link loop (too many levels of symbolic links)",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EMFILE: "too many open files (raise the limit with `ulimit -n`)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (a failing disk or network file system?)",
}


def os_reason(e: OSError) -> str:
    """The problem an OSError reports, in words (no path)."""
    if e.errno in _OS_REASONS:
        return _OS_REASONS[e.errno]
    return (e.strerror or str(e) or type(e).__name__).rstrip(".").lower()


def describe_os_error(e: OSError) -> str:
    """`<path>: <problem>` for an OSError (the path it names; both for a rename)."""
    where = e.filename if e.filename is not None else None
    if where is not None and e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    if where is None:
        return os_reason(e) if e.errno is not None else f"{type(e).__name__}: {e}"
    return f"{where}: {os_reason(e)}"


# A DataLoader worker's exception reaches the main process re-created from its formatted traceback:
# "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...\n<module.Type>: <message>".
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)
_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.*)$", re.S)
_ERRNO = re.compile(r"^\[Errno (\d+)\] (.*?)(?:: '(.*)')?$", re.S)


def _from_worker(text: str) -> str | None:
    if not _WORKER.match(text):
        return None
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    m = _LAST_LINE.match(last)
    if not m:
        return last
    message = m.group(2)
    e = _ERRNO.match(message)
    if e:  # an OSError from the worker: rebuild it to describe it like one from this process
        return describe_os_error(OSError(int(e.group(1)), e.group(2), e.group(3)))
    return message


def format_error(exc: BaseException) -> str | None:
    """The one-line message for a LatentVLAError or OSError; None for any other exception (a bug:
    the traceback is worth showing)."""
    if not isinstance(exc, (LatentVLAError, OSError)):
        return None
    text = str(exc) if isinstance(exc, LatentVLAError) or exc.errno is None else ""
    inner = _from_worker(text) if text else None
    if inner is not None:
        return inner
    if isinstance(exc, LatentVLAError):
        return " ".join(text.split("\n"))
    return describe_os_error(exc)
