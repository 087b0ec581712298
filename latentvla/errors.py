"""User-facing errors.

Raise `LatentVLAError` for anything a user can fix (bad path, bad flag, malformed file). The CLI
prints its message on one line and exits with status 2 instead of showing a traceback. The
message must name the file / field and what was expected.
"""


class LatentVLAError(Exception):
    """An error caused by user input (paths, flags, files); the message says how to fix it."""
