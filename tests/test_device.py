"""The one `--device` helper used by train, the LAM trainers, annotation and the VLA."""

from __future__ import annotations

import pytest
import torch

from latentvla.errors import LatentVLAError
from latentvla.utils.device import resolve_device


def test_resolve_device():
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto") == resolve_device("") == auto
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("gpu", "mps", "cuda:x"):
        with pytest.raises(LatentVLAError, match=r"--device .*expected auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(LatentVLAError, match="--gpu cuda:1: CUDA is not available"):
            resolve_device("cuda:1", flag="--gpu")
    else:
        with pytest.raises(LatentVLAError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
