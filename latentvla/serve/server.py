"""`latentvla serve`: a policy behind a websocket, msgpack numpy on the wire (see `protocol`).

The policy is loaded once. The event loop only moves frames: decoding and checking a request
runs in a small thread pool, inference in one model thread, so a slow request never holds up the
handshakes, pings or metadata of other clients. Requests that arrive while the model is busy (or
within `batch_wait_ms` of each other when several clients are connected) are answered by one
batched `predict_action` call of up to `max_batch_size` requests, when the policy takes batches
(`VLAPolicy`, except in its decode_tokens analysis mode); each client gets its own row. Bounds:
frames over `max_message_bytes` close the connection with code 1009 (websockets reads no
further); instructions over `max_instruction_chars` characters or `max_prompt_tokens` tokens get
an error reply. Images are resized (and center-cropped for checkpoints trained with image_aug)
with the training pipeline's own function, so clients send camera frames as they are. A
malformed request gets an error reply and the connection stays open; so does a policy error.
Both latentvla's client and openpi-client (`WebsocketClientPolicy(host, port).infer(obs)`) are
answered (`protocol` module doc); openpi-layout replies carry actions ready for the env when
`openpi_actions` is libero_env (the default for LIBERO policies: openpi's LIBERO example passes
them to `env.step` as they come): the gripper converted and binarized as `latentvla eval libero`
does; latentvla-layout replies always carry the policy's actions. Binds to the loopback by
default; with a token, the websocket handshake must carry `Authorization: Bearer <token>` (or
openpi's `Api-Key <token>`) or it is refused with HTTP 401.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np

from latentvla.data.transforms import DEFAULT_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.eval.policies import PolicySpec, build_policy, resolve_policy_flags
from latentvla.eval.transforms import convert_actions_to_env
from latentvla.serve.protocol import (
    DEFAULT_MAX_INSTRUCTION_CHARS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PROMPT_TOKENS,
    OpenpiKeys,
    Request,
    RequestError,
    packb,
    parse_request,
)
from latentvla.vla.policy_io import prepare_image

log = logging.getLogger("latentvla.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_MS = 2.0
DEFAULT_OPENPI_KEYS = OpenpiKeys()  # frozen, so one shared default instance is safe
TOKEN_SCHEMES = ("Bearer", "Api-Key")  # latentvla's client / openpi-client's api_key


@dataclass
class _Job:
    request: Request
    future: asyncio.Future
    queued: float  # time.perf_counter()


def _prompt_counter(policy: Any) -> Callable[[str], int] | None:
    """Tokens the instruction takes in the prompt, with the policy's own tokenizer (None: no tokenizer)."""
    processor = getattr(getattr(policy, "model", None), "processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        return None
    from latentvla.vla.processor import format_instruction

    chunk_len = processor.chunk_len
    return lambda text: len(tokenizer.encode(format_instruction(text, chunk_len), add_special_tokens=False))


class PolicyServer:
    """Answer `predict_action` requests for one policy (see module doc)."""

    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 center_crop: bool | None = None, image_resample: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_instruction_chars: int = DEFAULT_MAX_INSTRUCTION_CHARS,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS, openpi_keys: OpenpiKeys = DEFAULT_OPENPI_KEYS,
                 openpi_actions: str = "auto"):
        self.policy = policy
        self.host, self.port, self.token = host, port, token or None
        self.platform = getattr(policy, "platform", None)
        if self.platform is None:
            raise LatentVLAError("the served policy has no .platform")
        if max_batch_size < 1 or batch_wait_ms < 0 or max_message_bytes < 1024 or max_instruction_chars < 1 \
                or max_prompt_tokens < 1:
            raise LatentVLAError(f"bad server limits: max_batch_size {max_batch_size} (>= 1), batch_wait_ms "
                                 f"{batch_wait_ms} (>= 0), max_message_bytes {max_message_bytes} (>= 1024), "
                                 f"max_instruction_chars {max_instruction_chars} / max_prompt_tokens "
                                 f"{max_prompt_tokens} (>= 1)")
        if openpi_actions == "auto":  # openpi clients execute what they get: LIBERO scripts need env actions
            openpi_actions = "libero_env" if self.platform.name == "libero" else "policy"
        if openpi_actions not in ("policy", "libero_env"):
            raise LatentVLAError(f"openpi_actions must be auto, policy or libero_env, got {openpi_actions!r}")
        if openpi_actions == "libero_env" and self.platform.gripper_dim is None:
            raise LatentVLAError(f"openpi_actions libero_env needs a platform with a gripper dim "
                                 f"({self.platform.name!r} has none)")
        self.openpi_actions = openpi_actions
        # what the policy takes and how training made images (`latentvla.eval.policies`; the arguments override)
        self.num_images = int(getattr(policy, "num_images", None) or self.platform.num_cameras)
        self.use_proprio = bool(getattr(policy, "use_proprio", True))
        self.image_size = getattr(policy, "image_size", None)
        self.center_crop = bool(getattr(policy, "center_crop", False) if center_crop is None else center_crop)
        self.image_resample = image_resample or getattr(policy, "image_resample", None) or DEFAULT_RESAMPLE
        self.max_message_bytes, self.max_instruction_chars = int(max_message_bytes), int(max_instruction_chars)
        self.max_prompt_tokens, self.max_batch_size = int(max_prompt_tokens), int(max_batch_size)
        self.batch_wait_ms, self.openpi_keys = float(batch_wait_ms), openpi_keys
        # whether `predict_action(list of image lists, list of instructions, list of proprios)` works
        self.batching = bool(getattr(policy, "supports_batch", False)) and self.max_batch_size > 1
        self._count_tokens = _prompt_counter(policy)
        self.metadata = {
            "type": "metadata", "server": "latentvla", "platform": self.platform.to_dict(),
            "chunk_len": int(getattr(policy, "chunk_len", self.platform.chunk_len)),
            "num_images": self.num_images, "use_proprio": self.use_proprio,
            "image_size": self.image_size, "center_crop": self.center_crop, "image_resample": self.image_resample,
            "decode_tokens": bool(getattr(policy, "decode_tokens", False)),  # analysis mode: clients can tell
            "limits": {"max_message_bytes": self.max_message_bytes, "max_instruction_chars": self.max_instruction_chars,
                       "max_prompt_tokens": self.max_prompt_tokens,
                       "max_batch_size": self.max_batch_size if self.batching else 1},
            "openpi_keys": {"image_keys": list(openpi_keys.image_keys), "state_key": openpi_keys.state_key,
                            "prompt_key": openpi_keys.prompt_key},
            "openpi_actions": openpi_actions,  # what openpi-layout replies carry (module doc)
        }
        self._lock = threading.Lock()  # around the model (one model thread; also guards direct callers)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future | None = None
        self._thread: threading.Thread | None = None
        self._queue: asyncio.Queue | None = None
        self._connections = 0
        self.requests_received = 0  # checked requests queued for the model
        self.requests_served = 0  # answered with actions
        self.batches_run = 0

    # ------------------------------------------------------------------ request handling
    def _parse(self, message: bytes | str) -> Request:
        """Decode + check one frame (io thread); raises RequestError."""
        req = parse_request(message, self.platform, self.num_images, self.use_proprio, self.openpi_keys,
                            self.max_instruction_chars)
        # Clients send camera frames as they are; they are made as training made its images, by the
        # policy itself when it can (VLAPolicy.prepare_images), else here.
        if not hasattr(self.policy, "prepare_images"):
            req.images = [prepare_image(im, self.image_size, self.center_crop, self.image_resample)
                          for im in req.images]
        return req

    def _prompt_error(self, req: Request) -> str | None:
        if self._count_tokens is None:
            return None
        n = self._count_tokens(req.instruction)
        if n <= self.max_prompt_tokens:
            return None
        name = self.openpi_keys.prompt_key if req.layout == "openpi" else "instruction"
        return f"'{name}' takes {n} tokens; this server takes at most {self.max_prompt_tokens} (--max_prompt_tokens)"

    def _predict_one(self, req: Request) -> tuple[bool, Any]:
        try:
            return True, np.asarray(self.policy.predict_action(req.images, req.instruction, req.proprio),
                                    dtype=np.float32)
        except (RequestError, LatentVLAError) as e:
            return False, str(e)
        except Exception as e:  # a policy bug must not take the server down
            log.exception("policy error")
            return False, f"internal error: {type(e).__name__}: {e}"

    def _run_batch(self, requests: list[Request]) -> tuple[list[tuple[bool, Any]], float]:
        """The model thread: one batched predict_action (or one call per request) -> [(ok, actions | error)], ms."""
        with self._lock:
            start = time.perf_counter()
            results: list[tuple[bool, Any] | None] = [None] * len(requests)
            todo = []
            for i, req in enumerate(requests):
                try:
                    err = self._prompt_error(req)
                except Exception as e:  # a tokenizer failure is this request's problem only
                    err = f"cannot tokenize the instruction ({type(e).__name__}: {e})"
                if err is None:
                    todo.append(i)
                else:
                    results[i] = (False, err)
            if self.batching and len(todo) > 1:
                reqs = [requests[i] for i in todo]
                proprios = [r.proprio for r in reqs]
                try:
                    out = np.asarray(self.policy.predict_action([r.images for r in reqs], [r.instruction for r in reqs],
                                                                None if all(p is None for p in proprios) else proprios),
                                     dtype=np.float32)
                    if out.ndim != 3 or out.shape[0] != len(reqs):
                        raise LatentVLAError(f"batched predict_action gave shape {list(out.shape)} for "
                                             f"{len(reqs)} requests")
                    for k, i in enumerate(todo):
                        results[i] = (True, out[k].copy())
                    todo = []
                except Exception as e:  # find the culprit: each request on its own
                    log.info(f"batch of {len(reqs)} failed ({type(e).__name__}: {e}); answering one at a time")
            for i in todo:
                results[i] = self._predict_one(requests[i])
            self.batches_run += 1
            self.requests_served += sum(ok for ok, _ in results)
            return results, 1000.0 * (time.perf_counter() - start)

    def _reply(self, req: Request, actions: np.ndarray, **extra: Any) -> dict:
        """The reply carrying `actions` (openpi-layout replies have no "ok")."""
        if req.layout == "openpi" and self.openpi_actions == "libero_env":  # what `latentvla eval libero` steps
            actions = convert_actions_to_env(actions, self.platform.gripper_dim, binarize=True).astype(np.float32)
        return {"actions": actions, **extra} if req.layout == "openpi" else {"ok": True, "actions": actions, **extra}

    def handle_message(self, message: bytes | str) -> dict:
        """One frame -> one reply dict, answered directly in the calling thread (no queue, no batching;
        for embedding and tests). Never raises; an openpi-layout error is `{"ok": False, "error": ...}` too."""
        try:
            req = self._parse(message)
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:
            log.exception("request error")
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        (ok, value), = self._run_batch([req])[0]
        return self._reply(req, value) if ok else {"ok": False, "error": value}

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            jobs = [await queue.get()]
            limit = self.max_batch_size if self.batching else 1
            # wait a little for company only when several clients could send it
            deadline = loop.time() + (self.batch_wait_ms / 1000.0 if self._connections > 1 else 0.0)
            while len(jobs) < limit:
                if not queue.empty():
                    jobs.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            jobs = [j for j in jobs if not j.future.done()]  # clients that left meanwhile
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                results, infer_ms = await loop.run_in_executor(self._model_pool, self._run_batch,
                                                               [j.request for j in jobs])
            except Exception as e:  # never reached in normal operation; the batcher must live on regardless
                log.exception("batch error")
                results, infer_ms = [(False, f"internal error: {type(e).__name__}: {e}")] * len(jobs), 0.0
            for job, (ok, value) in zip(jobs, results, strict=True):
                if not job.future.done():
                    timing = {"queue_ms": 1000.0 * (started - job.queued), "infer_ms": infer_ms,
                              "batch_size": len(jobs)}
                    job.future.set_result((ok, value, timing))

    @staticmethod
    def _error_frame(error: str, layout: str, openpi_arrays: bool) -> bytes | str:
        if layout == "openpi":  # openpi-client's infer() raises RuntimeError with a text frame's content
            return f"latentvla policy server: {error}"
        return packb({"ok": False, "error": error}, openpi=openpi_arrays)

    async def _answer(self, message: bytes | str) -> bytes | str:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            req = await loop.run_in_executor(self._io_pool, self._parse, message)
        except RequestError as e:
            return self._error_frame(str(e), getattr(e, "layout", "latentvla"), getattr(e, "openpi_arrays", False))
        except Exception as e:  # an image-preparation bug must not take the server down
            log.exception("request error")
            return self._error_frame(f"internal error: {type(e).__name__}: {e}", "latentvla", False)
        future = loop.create_future()
        self._queue.put_nowait(_Job(req, future, time.perf_counter()))
        self.requests_received += 1
        ok, value, timing = await future
        if not ok:
            return self._error_frame(value, req.layout, req.openpi_arrays)
        timing["total_ms"] = 1000.0 * (time.perf_counter() - t0)
        return packb(self._reply(req, value, server_timing=timing), openpi=req.layout == "openpi" or req.openpi_arrays)

    def _check_token(self, connection, request):
        if self.token is None:
            return None
        got = request.headers.get("Authorization", "").encode()
        ok = False
        for scheme in TOKEN_SCHEMES:  # no short-circuit: the same work whichever scheme was sent
            ok |= hmac.compare_digest(got, f"{scheme} {self.token}".encode())
        if ok:
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")

    async def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self._connections += 1
        try:
            await ws.send(packb(self.metadata))
            async for message in ws:
                await ws.send(await self._answer(message))
        except ConnectionClosed as e:  # a client that exits without a close frame is normal, not a server error
            log.info(f"client {ws.remote_address} disconnected ({e})")
        finally:
            self._connections -= 1

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        self._queue = asyncio.Queue()
        self._io_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="latentvla-serve-io")
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentvla-serve-model")
        batcher = asyncio.create_task(self._batcher())
        try:
            async with serve(self._handler, self.host, self.port, process_request=self._check_token,
                             max_size=self.max_message_bytes, compression=None) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self._ready.set()
                await self._stop
        finally:
            batcher.cancel()
            self._io_pool.shutdown(wait=False, cancel_futures=True)
            self._model_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self) -> None:
        asyncio.run(self._main())

    def start(self, timeout: float = 30.0) -> PolicyServer:
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
    cfg.validate()
    resolve_policy_flags(cfg)
    token = cfg.token or os.environ.get("LATENTVLA_TOKEN") or None
    policy = build_policy(PolicySpec(kind=cfg.policy, checkpoint=cfg.pretrained_checkpoint, platform=cfg.robot,
                                     device=cfg.device, unnorm_key=cfg.unnorm_key, vlm_path=cfg.vlm_path,
                                     decode_tokens=cfg.decode_tokens, action_tokenizer_ckpt=cfg.action_tokenizer_ckpt))
    server = PolicyServer(policy, host=cfg.host, port=cfg.port, token=token, max_message_bytes=cfg.max_message_bytes,
                          max_instruction_chars=cfg.max_instruction_chars, max_prompt_tokens=cfg.max_prompt_tokens,
                          max_batch_size=cfg.max_batch_size, batch_wait_ms=cfg.batch_wait_ms,
                          openpi_keys=OpenpiKeys(tuple(cfg.openpi_image_keys), cfg.openpi_state_key,
                                                 cfg.openpi_prompt_key),
                          openpi_actions=cfg.openpi_actions)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if cfg.host not in LOOPBACK and token is None:
        log.warning(f"serving on {cfg.host} without a token: anyone who can reach this port can query the policy")
    try:
        import websockets  # noqa: F401  (fail early with a clear message)
    except ImportError:
        raise LatentVLAError("the policy server needs websockets and msgpack: pip install -e '.[serve]'") from None
    server.start()
    print(f"latentvla serve: listening on ws://{cfg.host}:{server.port} "
          f"(platform {server.platform.name}, chunk {server.metadata['chunk_len']}, token {'on' if token else 'off'}, "
          f"batches of up to {server.metadata['limits']['max_batch_size']}"
          f"{', actions decoded from the predicted codes' if server.metadata['decode_tokens'] else ''})",
          flush=True)
    try:
        while server._thread is not None and server._thread.is_alive():
            server._thread.join(timeout=1.0)
    except KeyboardInterrupt:
        server.stop()
    return 0
