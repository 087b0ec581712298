"""Reading JSON files a user handed us, with one clear error instead of a decoder traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError


def read_json(path: str | os.PathLike, missing: str = "not found") -> Any:
    """Parsed content of `path`; a missing file or invalid JSON raises LatentVLAError naming the file.

    `missing` completes the message for a missing file (say what the file should have been).
    """
    path = Path(path)
    if not path.is_file():
        raise LatentVLAError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LatentVLAError(f"{path}: invalid JSON ({e})") from None
