"""Client of `latentvla serve` with the policy interface the evaluators use.

    client = PolicyClient("127.0.0.1", 8000, token=None)
    actions = client.predict_action([agent_img, wrist_img], "open the drawer", proprio)  # [P, D]

`.platform`, `.chunk_len`, `.num_images`, `.use_proprio`, `.image_size`, `.center_crop`, `.image_resample` come from the
server's metadata. An
error reply raises `LatentVLAError` with the server's message (the connection stays usable; a
request over the server's --max_message_bytes makes it close the connection, and the client
reconnects before raising).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import numpy as np

from latentvla.data.transforms import DEFAULT_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.robots import Platform
from latentvla.serve.protocol import MAX_MESSAGE_BYTES, packb, unpackb


class PolicyClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, timeout: float = 30.0):
        self.address = f"{host}:{port}"
        self._host, self._port, self._timeout = host, port, timeout
        self._token = token or os.environ.get("LATENTVLA_TOKEN") or None
        self._connect()
        meta = self.metadata
        self.platform = Platform.from_dict(meta["platform"], source=f"policy server {self.address}")
        self.chunk_len = int(meta["chunk_len"])
        self.num_images = int(meta["num_images"])
        self.use_proprio = bool(meta["use_proprio"])
        self.image_size = None if meta.get("image_size") is None else int(meta["image_size"])
        self.center_crop = bool(meta.get("center_crop", False))
        self.image_resample = str(meta.get("image_resample", DEFAULT_RESAMPLE))

    def _connect(self) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        host_part = f"[{self._host}]" if ":" in self._host else self._host
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        extra = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}  # websockets >= 16
        try:
            self._ws = connect(f"ws://{host_part}:{self._port}", additional_headers=headers, max_size=MAX_MESSAGE_BYTES,
                               compression=None, proxy=None, open_timeout=self._timeout, **extra)
        except InvalidStatus as e:
            code = e.response.status_code
            hint = " (missing or wrong token: pass --token or set LATENTVLA_TOKEN)" if code == 401 else ""
            raise LatentVLAError(f"policy server {self.address} refused the connection: HTTP {code}{hint}") from None
        except (OSError, TimeoutError) as e:
            raise LatentVLAError(f"cannot connect to the policy server at {self.address}: {e}") from None
        meta = unpackb(self._ws.recv(timeout=self._timeout))
        if not isinstance(meta, dict) or meta.get("type") != "metadata":
            raise LatentVLAError(f"{self.address} is not a latentvla policy server (no metadata message)")
        self.metadata = meta

    def send_raw(self, payload: bytes | str) -> dict:
        """Send one frame as is and return the decoded reply (for tests and debugging); a text-frame
        reply (the server's errors to openpi-layout requests) comes back as `{"ok": False, "error": text}`."""
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(payload)
            reply = self._ws.recv(timeout=self._timeout)
        except ConnectionClosed as e:
            rcvd = getattr(e, "rcvd", None)
            if rcvd is not None and rcvd.code == 1009:  # over the server's --max_message_bytes: it read no further
                self._connect()  # so this client stays usable
                raise LatentVLAError(f"policy server {self.address}: the request ({len(payload)} bytes) is over the "
                                     f"server's --max_message_bytes limit ({rcvd.reason or 'message too big'}); "
                                     "send smaller frames") from None
            raise LatentVLAError(f"policy server {self.address} closed the connection ({e})") from None
        if isinstance(reply, str):
            return {"ok": False, "error": reply}
        return unpackb(reply)

    def predict_action(self, images: Sequence[np.ndarray] | np.ndarray, instruction: str,
                       proprio: np.ndarray | None = None) -> np.ndarray:
        request = {"type": "predict_action", "images": [np.asarray(im) for im in images],
                   "instruction": instruction,
                   "proprio": None if proprio is None else np.asarray(proprio, dtype=np.float32)}
        reply = self.send_raw(packb(request))
        if not isinstance(reply, dict) or not reply.get("ok"):
            err = reply.get("error") if isinstance(reply, dict) else reply
            raise LatentVLAError(f"policy server {self.address}: {err}")
        return np.asarray(reply["actions"], dtype=np.float32)

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        return self.predict_action(obs["images"], obs["instruction"], obs.get("proprio"))

    def reset(self) -> None:
        """Per-episode reset (the server keeps no episode state)."""

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
