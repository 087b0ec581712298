"""`latentvla serve`: a policy behind a websocket, msgpack numpy on the wire (see `protocol`).

The policy is loaded once; requests are answered one at a time (a lock around the model) in a
thread so the event loop keeps accepting connections. Images are resized (and center-cropped
for checkpoints trained with image_aug) with the training pipeline's own function, so clients
send camera frames as they are. A malformed request gets
`{"ok": False, "error": ...}` and the connection stays open; so does a policy error. Binds to the
loopback by default; with a token, the websocket handshake must carry
`Authorization: Bearer <token>` or it is refused with HTTP 401.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
from http import HTTPStatus
from typing import Any

import numpy as np

from latentvla.data.transforms import DEFAULT_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.eval.transforms import prepare_policy_image
from latentvla.serve.protocol import MAX_MESSAGE_BYTES, RequestError, packb, unpackb, validate_request

log = logging.getLogger("latentvla.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PolicyServer:
    """Answer `predict_action` requests for one policy (see module doc)."""

    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 center_crop: bool = False, image_resample: str = DEFAULT_RESAMPLE):
        from latentvla.eval.policies import policy_input_spec

        self.policy = policy
        self.host, self.port, self.token = host, port, token or None
        self.platform = getattr(policy, "platform", None)
        if self.platform is None:
            raise LatentVLAError("the served policy has no .platform")
        spec = policy_input_spec(policy)
        self.num_images, self.use_proprio = spec.num_images, spec.use_proprio
        self.image_size, self.center_crop, self.image_resample = spec.image_size, bool(center_crop), image_resample
        # image_size / center_crop / image_resample: how training images were made (applied to requests).
        self.metadata = {
            "type": "metadata", "server": "latentvla", "platform": self.platform.to_dict(),
            "chunk_len": int(getattr(policy, "chunk_len", self.platform.chunk_len)),
            "num_images": self.num_images, "use_proprio": self.use_proprio,
            "image_size": spec.image_size, "center_crop": bool(center_crop), "image_resample": image_resample,
        }
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._thread: threading.Thread | None = None
        self.requests_served = 0

    # ------------------------------------------------------------------ request handling
    def handle_message(self, message: bytes | str) -> dict:
        """One request -> one reply dict (never raises)."""
        try:
            if isinstance(message, str):
                raise RequestError("expected a binary msgpack frame, got a text frame")
            msg = unpackb(message)
            images, instruction, proprio = validate_request(msg, self.platform, self.num_images, self.use_proprio)
            # Clients send camera frames as they are; they are made as training made its images, by the
            # policy itself when it can (VLAPolicy.prepare_images), else here.
            if not hasattr(self.policy, "prepare_images"):
                images = [prepare_policy_image(im, self.image_size, self.center_crop, self.image_resample) for im in images]
            with self._lock:
                actions = self.policy.predict_action(images, instruction, proprio)
            actions = np.asarray(actions, dtype=np.float32)
            self.requests_served += 1
            return {"ok": True, "actions": actions}
        except (RequestError, LatentVLAError) as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a policy bug must not take the server down
            log.exception("policy error")
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}

    def _check_token(self, connection, request):
        if self.token is None:
            return None
        got = request.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")

    async def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        try:
            await ws.send(packb(self.metadata))
            async for message in ws:
                reply = await loop.run_in_executor(None, self.handle_message, message)
                await ws.send(packb(reply))
        except ConnectionClosed as e:  # a client that exits without a close frame is normal, not a server error
            log.info(f"client {ws.remote_address} disconnected ({e})")

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._handler, self.host, self.port, process_request=self._check_token,
                         max_size=MAX_MESSAGE_BYTES, compression=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self) -> None:
        asyncio.run(self._main())

    def start(self, timeout: float = 30.0) -> "PolicyServer":
        """Serve in a background thread (tests, notebooks); returns once the port is bound."""
        self._thread = threading.Thread(target=self.serve_forever, name="latentvla-policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise LatentVLAError(f"policy server did not start on {self.host}:{self.port} within {timeout} s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._stop.done():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        if self._thread is not None:
            self._thread.join(timeout=10)


def run_server(cfg) -> int:
    from latentvla.eval.policies import PolicySpec, build_policy

    cfg.validate()
    if cfg.policy == "vla" and cfg.pretrained_checkpoint:  # a run dir / `latest` pointer -> the step dir it names
        from latentvla.vla.checkpoint import resolve_policy_dir

        cfg.pretrained_checkpoint = str(resolve_policy_dir(cfg.pretrained_checkpoint))
    token = cfg.token or os.environ.get("LATENTVLA_TOKEN") or None
    policy = build_policy(PolicySpec(kind=cfg.policy, checkpoint=cfg.pretrained_checkpoint, platform=cfg.robot,
                                     device=cfg.device, unnorm_key=cfg.unnorm_key, vlm_path=cfg.vlm_path))
    center_crop, image_resample = False, DEFAULT_RESAMPLE
    if cfg.policy == "vla":
        from latentvla.eval.checkpoint_info import read_checkpoint_info

        info = read_checkpoint_info(cfg.pretrained_checkpoint)
        center_crop, image_resample = bool(info.get("image_aug")), info["image_resample"]
    server = PolicyServer(policy, host=cfg.host, port=cfg.port, token=token, center_crop=center_crop,
                          image_resample=image_resample)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if cfg.host not in LOOPBACK and token is None:
        log.warning(f"serving on {cfg.host} without a token: anyone who can reach this port can query the policy")
    try:
        import websockets  # noqa: F401  (fail early with a clear message)
    except ImportError:
        raise LatentVLAError("the policy server needs websockets and msgpack: pip install -e '.[serve]'") from None
    server.start()
    print(f"latentvla serve: listening on ws://{cfg.host}:{server.port} "
          f"(platform {server.platform.name}, chunk {server.metadata['chunk_len']}, token {'on' if token else 'off'})",
          flush=True)
    try:
        while server._thread is not None and server._thread.is_alive():
            server._thread.join(timeout=1.0)
    except KeyboardInterrupt:
        server.stop()
    return 0
