"""latentvla: Vision-Language-Action policies with latent action supervision.

The package is import-light on purpose: heavy dependencies (torch, transformers) are imported by
the sub-modules that need them, so `latentvla --help` stays fast.
"""

__version__ = "0.1.0"

from latentvla.errors import LatentVLAError  # noqa: E402

__all__ = ["LatentVLAError", "__version__"]
