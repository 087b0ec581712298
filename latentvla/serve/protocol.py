"""Wire format of the policy server: msgpack maps with numpy arrays, plus request validation.

Two array encodings are read, both numeric dtypes only (nothing is unpickled):

- latentvla's: `{"__ndarray__": True, "dtype": "<f4", "shape": [...], "data": bytes}` (str keys);
- openpi-client's `msgpack_numpy`: the same fields under bytes keys (`b"__ndarray__"`, `b"data"`,
  `b"dtype"`, `b"shape"`), and numpy scalars as `{b"__npgeneric__": True, b"data": x, b"dtype": s}`.

Replies use the encoding the request used. Two request layouts:

- latentvla's: `{"type": "predict_action", "images": [uint8 HxWx3, ...] (primary first) or uint8
  [N, H, W, 3], "instruction": str, "proprio": float [proprio_dim] or None}` -> `{"ok": True,
  "actions": float32 [P, D], "server_timing": {...}}` or `{"ok": False, "error": str}`;
- an openpi observation (a map with none of the keys `type` / `images` / `instruction`): images,
  state and prompt under configurable keys (`OpenpiKeys`, default openpi's LIBERO example) ->
  `{"actions": float32 [P, D], "server_timing": {...}}`, errors as a text frame (what
  openpi-client's `infer` raises as `RuntimeError`).

On connect the server sends `{"type": "metadata", "platform": {...}, "chunk_len": P, "num_images":
N, "use_proprio": bool, "server": "latentvla", ...}` (plain values: both clients read it).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from latentvla.robots import Platform

MAX_MESSAGE_BYTES = 64 * 2**20  # what a client accepts from the server
DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20  # what the server accepts (--max_message_bytes): a few 512² frames fit
DEFAULT_MAX_INSTRUCTION_CHARS = 1000
DEFAULT_MAX_PROMPT_TOKENS = 384
MAX_IMAGE_SIDE = 4096
LATENTVLA_KEYS = ("type", "images", "instruction")


class RequestError(ValueError):
    """A malformed request; its message goes back to the client."""


@dataclass(frozen=True)
class OpenpiKeys:
    """Where an openpi observation holds the policy inputs (a key, or a `/` path into nested maps
    when no key has that literal name)."""

    image_keys: tuple[str, ...] = ("observation/image", "observation/wrist_image")  # primary camera first
    state_key: str = "observation/state"
    prompt_key: str = "prompt"


@dataclass
class Request:
    images: list[np.ndarray]
    instruction: str
    proprio: np.ndarray | None
    layout: str = "latentvla"  # or "openpi"
    openpi_arrays: bool = False  # the request used openpi's bytes-key array encoding


# ----------------------------------------------------------------------------- encoding
def _pack_default(obj: Any, openpi: bool = False) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        obj = np.ascontiguousarray(obj)
        if openpi:
            return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
        return {"__ndarray__": True, "dtype": obj.dtype.str, "shape": list(obj.shape), "data": obj.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send objects of type {type(obj).__name__}")


def packb(obj: Any, openpi: bool = False) -> bytes:
    """Encode; `openpi=True` writes arrays as openpi-client's `msgpack_numpy` does (bytes keys)."""
    return msgpack.packb(obj, default=functools.partial(_pack_default, openpi=openpi), use_bin_type=True)


def _decode_array(dtype: Any, shape: Any, data: Any) -> np.ndarray:
    try:
        if not isinstance(dtype, str):
            raise TypeError(f"dtype must be a string, got {type(dtype).__name__}")
        dt = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
    except (KeyError, TypeError, ValueError) as e:
        raise RequestError(f"malformed array ({e})") from None
    if dt.kind not in "biuf" or not isinstance(data, (bytes, bytearray)):
        raise RequestError(f"arrays must be numeric, got dtype {dt}")
    if len(shape) > 32 or any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(data):
        raise RequestError(f"array data has {len(data)} bytes, which does not match shape {list(shape)} and dtype {dt}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _decode_scalar(dtype: Any, value: Any) -> Any:
    try:
        dt = np.dtype(dtype) if isinstance(dtype, str) else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf" or not isinstance(value, (bool, int, float)):
        raise RequestError(f"malformed numpy scalar (dtype {dtype!r}, value of type {type(value).__name__})")
    try:
        return dt.type(value)
    except (OverflowError, ValueError) as e:
        raise RequestError(f"malformed numpy scalar ({e})") from None


def _make_hook(seen: list[bool]):
    """msgpack object hook decoding both array encodings; sets seen[0] when openpi's (bytes keys) is used."""
    def hook(d: dict) -> Any:
        if d.get("__ndarray__") is True:
            names: tuple = ("dtype", "shape", "data")
        elif d.get(b"__ndarray__") is True or d.get(b"__npgeneric__") is True:
            seen[0] = True
            if d.get(b"__ndarray__") is not True:
                return _decode_scalar(d.get(b"dtype"), d.get(b"data"))
            names = (b"dtype", b"shape", b"data")
        else:
            return d
        try:
            return _decode_array(*(d[n] for n in names))
        except KeyError as e:
            raise RequestError(f"malformed array (no {e})") from None

    return hook


def unpackb(data: bytes) -> Any:
    """Decode either array encoding."""
    return decode(data)[0]


def decode(data: bytes) -> tuple[Any, bool]:
    """Decode a frame -> (object, whether it used openpi's bytes-key array encoding)."""
    seen = [False]
    try:
        return msgpack.unpackb(data, object_hook=_make_hook(seen), raw=False, strict_map_key=False), seen[0]
    except RequestError:
        raise
    except Exception as e:
        raise RequestError(f"cannot decode the request as msgpack ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- requests
def is_openpi_layout(msg: Any) -> bool:
    return isinstance(msg, dict) and not any(k in msg for k in LATENTVLA_KEYS)


def _lookup(obs: dict, key: str) -> tuple[bool, Any]:
    if key in obs:
        return True, obs[key]
    node: Any = obs
    for part in key.split("/"):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def openpi_request(obs: dict, keys: OpenpiKeys, num_images: int, use_proprio: bool) -> tuple[dict, list[str]]:
    """An openpi observation -> a latentvla-layout request (and the names of its images, for errors)."""
    image_keys = list(keys.image_keys[: max(num_images, 1)])
    wanted = image_keys + [keys.prompt_key] + ([keys.state_key] if use_proprio else [])
    found = {k: _lookup(obs, k) for k in wanted}
    missing = [k for k in wanted if not found[k][0]]
    if missing:
        have = ", ".join(sorted(map(str, obs))[:12])
        raise RequestError(f"openpi observation lacks key(s) {', '.join(missing)} (it has: {have}); map yours with "
                           "--openpi_image_keys / --openpi_state_key / --openpi_prompt_key, or send latentvla's "
                           "{'images', 'instruction', 'proprio'} request")
    images = []
    for k in image_keys:
        img = found[k][1]
        # openpi's ALOHA-style clients send CHW frames: unambiguous when only the first axis is 3
        if isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[0] == 3 and img.shape[2] != 3:
            img = np.transpose(img, (1, 2, 0))
        images.append(img)
    request = {"images": images, "instruction": found[keys.prompt_key][1],
               "proprio": found[keys.state_key][1] if use_proprio else None}
    return request, [f"'{k}'" for k in image_keys]


def validate_request(msg: Any, platform: Platform, num_images: int, use_proprio: bool,
                     max_instruction_chars: int | None = None, image_names: Sequence[str] | None = None,
                     instruction_name: str = "instruction",
                     proprio_name: str = "proprio") -> tuple[list[np.ndarray], str, np.ndarray | None]:
    """Check a latentvla-layout predict_action request; returns (images, instruction, proprio) or
    raises RequestError."""
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
        raise RequestError(f"'{instruction_name}' must be a non-empty string")
    if max_instruction_chars is not None and len(instruction) > max_instruction_chars:
        raise RequestError(f"'{instruction_name}' has {len(instruction)} characters; this server takes at most "
                           f"{max_instruction_chars} (--max_instruction_chars)")
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
        name = image_names[i] if image_names is not None and i < len(image_names) else f"images[{i}]"
        if not isinstance(img, np.ndarray):
            raise RequestError(f"{name} must be an array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise RequestError(f"{name} must be uint8, got {img.dtype}")
        if img.ndim != 3 or img.shape[2] != 3 or not (1 <= img.shape[0] <= MAX_IMAGE_SIDE
                                                      and 1 <= img.shape[1] <= MAX_IMAGE_SIDE):
            raise RequestError(f"{name} must be HxWx3 (sides 1..{MAX_IMAGE_SIDE}), got shape {list(img.shape)}")
    proprio = msg.get("proprio")
    if proprio is not None:
        try:
            arr = np.asarray(proprio)
        except (TypeError, ValueError):
            arr = np.asarray(None)
        if arr.dtype.kind not in "iuf" or arr.ndim != 1 or arr.shape[0] != platform.proprio_dim:
            raise RequestError(f"'{proprio_name}' must be a numeric vector of size {platform.proprio_dim}, "
                               f"got {arr.dtype} shape {list(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise RequestError(f"'{proprio_name}' contains NaN or inf")
        proprio = arr.astype(np.float32)
    elif use_proprio and platform.proprio_dim > 0:
        raise RequestError(f"this policy uses proprio: send '{proprio_name}' (size {platform.proprio_dim})")
    return list(images), instruction, proprio


def parse_request(data: bytes | str, platform: Platform, num_images: int, use_proprio: bool,
                  openpi_keys: OpenpiKeys = OpenpiKeys(), max_instruction_chars: int | None = None) -> Request:
    """A frame -> a checked `Request`; raises RequestError (with `.layout` / `.openpi_arrays` set for the reply)."""
    layout, openpi_arrays = "latentvla", False
    try:
        if isinstance(data, str):
            raise RequestError("expected a binary msgpack frame, got a text frame")
        msg, openpi_arrays = decode(data)
        if is_openpi_layout(msg):
            layout = "openpi"
            req, names = openpi_request(msg, openpi_keys, num_images, use_proprio)
            images, instruction, proprio = validate_request(
                req, platform, num_images, use_proprio, max_instruction_chars, image_names=names,
                instruction_name=openpi_keys.prompt_key, proprio_name=openpi_keys.state_key)
        else:
            images, instruction, proprio = validate_request(msg, platform, num_images, use_proprio,
                                                            max_instruction_chars)
    except RequestError as e:
        e.layout, e.openpi_arrays = layout, openpi_arrays
        raise
    return Request(images, instruction, proprio, layout, openpi_arrays)
