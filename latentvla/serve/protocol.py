"""Wire format of the policy server: msgpack maps with numpy arrays, plus request validation.

Arrays travel as `{"__ndarray__": True, "dtype": "<f4", "shape": [...], "data": bytes}` (numeric
dtypes only; nothing is unpickled). Messages:

- server -> client on connect: `{"type": "metadata", "platform": {...}, "chunk_len": P,
  "num_images": N, "use_proprio": bool, "server": "latentvla", "version": ...}`
- client -> server: `{"type": "predict_action", "images": [uint8 HxWx3, ...] (primary first) or
  uint8 [N, H, W, 3], "instruction": str, "proprio": float [proprio_dim] or None}`
- server -> client: `{"ok": True, "actions": float32 [P, D]}` or `{"ok": False, "error": str}`.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from latentvla.robots import Platform

MAX_MESSAGE_BYTES = 64 * 2**20
MAX_IMAGE_SIDE = 4096


class RequestError(ValueError):
    """A malformed request; its message goes back to the client."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        obj = np.ascontiguousarray(obj)
        return {"__ndarray__": True, "dtype": obj.dtype.str, "shape": list(obj.shape), "data": obj.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send objects of type {type(obj).__name__}")


def _object_hook(d: dict) -> Any:
    if d.get("__ndarray__") is True:
        try:
            dtype = np.dtype(d["dtype"])
            shape = tuple(int(s) for s in d["shape"])
            data = d["data"]
        except (KeyError, TypeError, ValueError) as e:
            raise RequestError(f"malformed array ({e})") from None
        if dtype.kind not in "biuf" or not isinstance(data, (bytes, bytearray)):
            raise RequestError(f"arrays must be numeric, got dtype {dtype}")
        if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
            raise RequestError(f"array data has {len(data)} bytes, which does not match shape {list(shape)} and dtype {dtype}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    return d


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, object_hook=_object_hook, raw=False, strict_map_key=False)
    except RequestError:
        raise
    except Exception as e:
        raise RequestError(f"cannot decode the request as msgpack ({type(e).__name__}: {e})") from None


def validate_request(msg: Any, platform: Platform, num_images: int,
                     use_proprio: bool) -> tuple[list[np.ndarray], str, np.ndarray | None]:
    """Check a predict_action request; returns (images, instruction, proprio) or raises RequestError."""
    if not isinstance(msg, dict):
        raise RequestError(f"a request must be a msgpack map, got {type(msg).__name__}")
    kind = msg.get("type", "predict_action")
    if kind != "predict_action":
        raise RequestError(f"unknown request type {kind!r}; expected 'predict_action'")
    missing = [k for k in ("images", "instruction") if k not in msg]
    if missing:
        raise RequestError(f"request lacks key(s) {', '.join(missing)}")
    instruction = msg["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise RequestError("'instruction' must be a non-empty string")
    images = msg["images"]
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise RequestError(f"'images' as one array must be [N, H, W, 3], got shape {list(images.shape)}")
        images = list(images)
    if not isinstance(images, (list, tuple)) or not images:
        raise RequestError("'images' must be a non-empty list of uint8 HxWx3 arrays (primary camera first)")
    if len(images) > max(num_images, 1):
        raise RequestError(f"'images' has {len(images)} images; this policy takes at most {num_images}")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray):
            raise RequestError(f"images[{i}] must be an array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise RequestError(f"images[{i}] must be uint8, got {img.dtype}")
        if img.ndim != 3 or img.shape[2] != 3 or not (1 <= img.shape[0] <= MAX_IMAGE_SIDE and 1 <= img.shape[1] <= MAX_IMAGE_SIDE):
            raise RequestError(f"images[{i}] must be HxWx3 (sides 1..{MAX_IMAGE_SIDE}), got shape {list(img.shape)}")
    proprio = msg.get("proprio")
    if proprio is not None:
        arr = np.asarray(proprio)
        if arr.dtype.kind not in "iuf" or arr.ndim != 1 or arr.shape[0] != platform.proprio_dim:
            raise RequestError(f"'proprio' must be a numeric vector of size {platform.proprio_dim}, "
                               f"got {arr.dtype} shape {list(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise RequestError("'proprio' contains NaN or inf")
        proprio = arr.astype(np.float32)
    elif use_proprio and platform.proprio_dim > 0:
        raise RequestError(f"this policy uses proprio: send 'proprio' (size {platform.proprio_dim})")
    return list(images), instruction, proprio
