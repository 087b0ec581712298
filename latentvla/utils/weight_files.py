"""Reading weight files (`*.safetensors`, `torch.save` files) with errors that name the file.

A truncated or corrupt file otherwise surfaces as a bare safetensors / torch error naming no file
("incomplete metadata, file not fully covered", "failed finding central directory").

- `safetensors_problem(path)` / `torch_file_problem(path)`: None if the file is intact as far as a
  cheap check can tell (safetensors: header parsed and the data exactly covering the file;
  torch.save: the zip directory at the end of the file readable), else the problem in words.
  Costs a header read, not a load; truncation (a killed copy, a full disk) is always caught.
- `check_safetensors`, `load_safetensors`, `load_torch_file`: the same as one `LatentVLAError`.
OS errors (permissions, ...) propagate as `OSError` naming the file (the CLI words them).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError


def _open_check(path: Path) -> None:
    # An OSError with the file name and errno (the safetensors reader raises one without either).
    with open(path, "rb"):
        pass


def safetensors_problem(path: str | os.PathLike) -> str | None:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _open_check(path)
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except SafetensorError as e:
        return f"truncated or corrupt safetensors file ({e})"
    return None


def check_safetensors(path: str | os.PathLike, hint: str = "") -> None:
    problem = safetensors_problem(path)
    if problem is not None:
        raise LatentVLAError(f"{path}: {problem}{'; ' + hint if hint else ''}")


def check_safetensors_dir(directory: str | os.PathLike, what: str, hint: str = "") -> None:
    """Every `*.safetensors` file of a model directory (e.g. a Hugging Face backbone), header-checked."""
    for f in sorted(Path(directory).glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem is not None:
            raise LatentVLAError(f"{what}: {f}: {problem}{'; ' + hint if hint else ''}")


def load_safetensors(path: str | os.PathLike, hint: str = "") -> dict:
    """`safetensors.torch.load_file(path)` (CPU tensors), a damaged file named in a LatentVLAError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path, hint)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise LatentVLAError(f"{path}: corrupt safetensors file ({e}){'; ' + hint if hint else ''}") from None


def torch_file_problem(path: str | os.PathLike) -> str | None:
    path = Path(path)
    _open_check(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, EOFError) as e:
        return f"truncated or corrupt torch.save file ({e})"
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "not a torch.save file (no data.pkl inside)"
    return None


def load_torch_file(path: str | os.PathLike, hint: str = "") -> Any:
    """`torch.load(path, map_location="cpu", weights_only=False)` (our own files only), a damaged
    file named in a LatentVLAError."""
    import pickle

    import torch

    problem = torch_file_problem(path)
    if problem is None:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            problem = f"corrupt torch.save file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    raise LatentVLAError(f"{path}: {problem}{'; ' + hint if hint else ''}")
