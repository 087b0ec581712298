"""What every LIBERO test module shares: `pytestmark = LIBERO_MARKS`."""

from __future__ import annotations

import importlib.util

import pytest

LIBERO_MARKS = [
    pytest.mark.libero,
    pytest.mark.skipif(importlib.util.find_spec("libero") is None or importlib.util.find_spec("robosuite") is None,
                       reason="LIBERO simulator not installed: pip install -e '.[libero]'"),
    # LIBERO writes its config file on first import: point it at the test's tmp dir, never ~/.libero
    pytest.mark.usefixtures("libero_config_dir"),
]
