"""Policy server: openpi-client's wire format, bounds, a free event loop, and micro-batching (loopback only)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest

from latentvla.errors import LatentVLAError
from latentvla.eval.policies import RandomPolicy, ZeroPolicy
from latentvla.robots import get_platform
from latentvla.serve.client import PolicyClient
from latentvla.serve.protocol import OpenpiKeys, decode, packb, unpackb
from latentvla.serve.server import PolicyServer

LIBERO = get_platform("libero")
RNG = np.random.default_rng(0)
IMG = np.zeros((64, 64, 3), np.uint8)


# ----------------------------------------------------------------------------- helpers
def _openpi_decode(frame):
    """Read a reply the way openpi-client does: bytes-keyed arrays only (str-keyed ones stay maps)."""
    def hook(d):
        if d.get(b"__ndarray__"):
            return np.frombuffer(d[b"data"], dtype=np.dtype(d[b"dtype"])).reshape(d[b"shape"])
        return d

    assert isinstance(frame, bytes), frame
    return msgpack.unpackb(frame, object_hook=hook)


class _Raw:
    """A bare websocket client (sync) that sends whatever it is given and returns the raw reply frame."""

    def __init__(self, port, headers=None):
        import inspect

        from websockets.sync.client import connect

        extra = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}  # websockets >= 16
        self.ws = connect(f"ws://127.0.0.1:{port}", additional_headers=headers, compression=None, max_size=None,
                          open_timeout=10, **extra)
        self.metadata = unpackb(self.ws.recv(timeout=10))

    def ask(self, payload, timeout=30):
        self.ws.send(payload)
        return self.ws.recv(timeout=timeout)

    def close(self):
        self.ws.close()


def _env(actions):
    """What `latentvla eval libero` hands env.step (gripper: dataset 1 open -> env -1 open, binarized)."""
    from latentvla.eval.transforms import convert_actions_to_env

    return convert_actions_to_env(actions, LIBERO.gripper_dim, binarize=True).astype(np.float32)


def _openpi_obs(rng, prompt="put the bowl on the plate", side=(224, 224)):
    return {"observation/image": rng.integers(0, 255, (*side, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 255, (*side, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8),  # float64, as openpi's LIBERO example builds it
            "prompt": prompt}


@pytest.fixture(scope="module")
def vla_policy(tiny_vlm_dir, vla_data_root, tmp_path_factory):
    """An (untrained) tiny baseline checkpoint served as a VLAPolicy: two cameras, proprio, a real tokenizer."""
    import torch

    from latentvla.data.dataset import VLADataset
    from latentvla.vla.checkpoint import save_policy_checkpoint
    from latentvla.vla.configuration_vla import VLAConfig
    from latentvla.vla.modeling_vla import LatentVLA
    from latentvla.vla.policy import VLAPolicy

    torch.manual_seed(0)
    model = LatentVLA.from_config(VLAConfig(vla_id="baseline", vlm_path=str(tiny_vlm_dir), default_image_size=64),
                                  LIBERO, device="cpu")
    ds = VLADataset(vla_data_root, "libero_goal", image_size=64, image_aug=False, progress=False)
    ckpt = save_policy_checkpoint(tmp_path_factory.mktemp("serve_ckpt") / "step_0", model,
                                  {"max_steps": 0, "vla_id": "baseline", "image_resample": "bicubic"}, ds.statistics)
    return VLAPolicy.from_pretrained(ckpt, device="cpu")


@pytest.fixture
def vla_server(vla_policy):
    srv = PolicyServer(vla_policy, port=0, token="s3cret", max_batch_size=8, openpi_actions="policy").start()
    yield srv
    srv.stop()


# ----------------------------------------------------------------------------- A: openpi-client's wire format
def test_protocol_reads_both_array_encodings():
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    for openpi in (False, True):
        out, used_openpi = decode(packb({"a": a, "s": np.float32(2.5)}, openpi=openpi))
        assert np.array_equal(out["a"], a) and out["a"].dtype == np.int16 and out["s"] == 2.5 and used_openpi is openpi
    # openpi's numpy-scalar encoding, and bytes-keyed arrays that lie about their size
    scalar = msgpack.packb({"x": {b"__npgeneric__": True, b"data": 3, b"dtype": "<i8"}})
    assert decode(scalar)[0]["x"] == 3 and decode(scalar)[1] is True
    from latentvla.serve.protocol import RequestError

    liar = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 5, b"dtype": "<f4", b"shape": [3]}})
    with pytest.raises(RequestError, match="does not match shape"):
        decode(liar)
    with pytest.raises(RequestError, match="numeric"):
        decode(msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}))


def test_openpi_layout_round_trip_matches_the_policy(vla_server, vla_policy):
    """What openpi-client sends (bytes-keyed arrays, LIBERO example keys, `Api-Key` header) gets openpi's reply."""
    rng = np.random.default_rng(1)
    obs = _openpi_obs(rng)
    client = _Raw(vla_server.port, headers={"Authorization": "Api-Key s3cret"})
    try:
        assert client.metadata["chunk_len"] == 8 and client.metadata["openpi_keys"]["prompt_key"] == "prompt"
        reply = _openpi_decode(client.ask(packb(obs, openpi=True)))
        assert set(reply) == {"actions", "server_timing"}
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (8, 7)
        assert {"infer_ms", "queue_ms", "total_ms", "batch_size"} <= set(reply["server_timing"])
        ref = vla_policy.predict_action([obs["observation/image"], obs["observation/wrist_image"]], obs["prompt"],
                                        obs["observation/state"])
        np.testing.assert_allclose(reply["actions"], ref, atol=1e-5)
        # latentvla's own request layout sent through openpi's encoding: latentvla's reply, openpi's arrays
        mine = {"images": [obs["observation/image"], obs["observation/wrist_image"]], "instruction": obs["prompt"],
                "proprio": obs["observation/state"]}
        reply = _openpi_decode(client.ask(packb(mine, openpi=True)))
        assert reply["ok"] is True and isinstance(reply["actions"], np.ndarray)
        np.testing.assert_allclose(reply["actions"], ref, atol=1e-5)
        # openpi-layout errors are text frames (openpi-client raises them as RuntimeError); the connection stays usable
        for bad, what in [({k: v for k, v in obs.items() if k != "prompt"}, "lacks key(s) prompt"),
                          ({**obs, "observation/state": np.zeros(5)}, "'observation/state' must be a numeric "
                                                                      "vector of size 8"),
                          ({**obs, "observation/wrist_image": np.zeros((8, 8), np.uint8)}, "'observation/wrist_image' "
                                                                                           "must be HxWx3"),
                          ({**obs, "prompt": "x" * 1001}, "at most 1000 (--max_instruction_chars)")]:
            err = client.ask(packb(bad, openpi=True))
            assert isinstance(err, str) and what in err, (what, err)
            assert _openpi_decode(client.ask(packb(obs, openpi=True)))["actions"].shape == (8, 7)
    finally:
        client.close()
    # ALOHA-style CHW frames under a nested, remapped layout
    srv = PolicyServer(vla_policy, port=0, openpi_keys=OpenpiKeys(("cams/cam_high", "cams/cam_wrist"), "state", "task"))
    srv.start()
    try:
        client = _Raw(srv.port)
        nested = {"cams": {"cam_high": np.transpose(obs["observation/image"], (2, 0, 1)),
                           "cam_wrist": np.transpose(obs["observation/wrist_image"], (2, 0, 1))},
                  "state": obs["observation/state"], "task": obs["prompt"]}
        assert client.metadata["openpi_actions"] == "libero_env"  # auto, for a LIBERO policy
        reply = _openpi_decode(client.ask(packb(nested, openpi=True)))
        assert set(np.unique(reply["actions"][:, 6])) <= {-1.0, 1.0}
        np.testing.assert_allclose(reply["actions"], _env(ref), atol=1e-5)
        # latentvla's layout keeps the policy's actions (the evaluator converts them itself)
        mine = unpackb(client.ask(packb({"images": [obs["observation/image"], obs["observation/wrist_image"]],
                                         "instruction": obs["prompt"], "proprio": obs["observation/state"]})))
        np.testing.assert_allclose(mine["actions"], ref, atol=1e-5)
        client.close()
    finally:
        srv.stop()


def test_handle_message_answers_directly(vla_policy):
    """The documented synchronous entry point (no socket, no queue)."""
    srv = PolicyServer(vla_policy, port=0)
    obs = _openpi_obs(np.random.default_rng(4))
    ref = vla_policy.predict_action([obs["observation/image"], obs["observation/wrist_image"]], obs["prompt"],
                                    obs["observation/state"])
    np.testing.assert_allclose(srv.handle_message(packb(obs, openpi=True))["actions"], _env(ref), atol=1e-5)
    mine = srv.handle_message(packb({"images": [obs["observation/image"], obs["observation/wrist_image"]],
                                     "instruction": obs["prompt"], "proprio": obs["observation/state"]}))
    assert mine["ok"] is True
    np.testing.assert_allclose(mine["actions"], ref, atol=1e-5)
    assert "lacks key(s) prompt" in srv.handle_message(packb({k: v for k, v in obs.items() if k != "prompt"}))["error"]
    assert srv.handle_message("text")["ok"] is False and srv.requests_served == 2


def test_api_key_header_is_a_token():
    from websockets.exceptions import InvalidStatus

    srv = PolicyServer(ZeroPolicy(LIBERO), port=0, token="t0k").start()
    try:
        for header in ("Api-Key nope", "Bearer nope", "t0k", "Api-Key  t0k"):
            with pytest.raises(InvalidStatus, match="401"):
                _Raw(srv.port, headers={"Authorization": header})
        for header in ("Api-Key t0k", "Bearer t0k"):
            _Raw(srv.port, headers={"Authorization": header}).close()
    finally:
        srv.stop()


OPENPI_SCRIPT = r"""
import sys, numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy
port, inp, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
obs = dict(np.load(inp))
obs["prompt"] = str(obs["prompt"])
policy = WebsocketClientPolicy("127.0.0.1", port, api_key="s3cret")
meta = policy.get_server_metadata()
result = policy.infer(obs)
try:
    policy.infer({k: v for k, v in obs.items() if k != "prompt"})
    error = ""
except RuntimeError as e:
    error = str(e)
again = policy.infer(obs)
np.savez(out, actions=result["actions"], again=again["actions"], infer_ms=result["server_timing"]["infer_ms"],
         error=error, chunk_len=meta["chunk_len"])
"""


def _openpi_python() -> str | None:
    if importlib.util.find_spec("openpi_client") is not None:
        return sys.executable
    return os.environ.get("LATENTVLA_OPENPI_PYTHON") or None


@pytest.mark.skipif(_openpi_python() is None,
                    reason="openpi-client is not installed (0.1.2 pins numpy<2, so it is no dev dependency): set "
                           "LATENTVLA_OPENPI_PYTHON to the python of a venv with `pip install openpi-client==0.1.2 "
                           "typing_extensions`")
def test_real_openpi_client_round_trip(vla_policy, tmp_path):
    """openpi_client.websocket_client_policy.WebsocketClientPolicy(host, port, api_key).infer(obs), unchanged."""
    obs = _openpi_obs(np.random.default_rng(2), prompt="open the top drawer")
    np.savez(tmp_path / "obs.npz", **obs)
    srv = PolicyServer(vla_policy, port=0, token="s3cret").start()  # defaults: LIBERO keys, env-ready actions
    try:
        run = subprocess.run([_openpi_python(), "-c", OPENPI_SCRIPT, str(srv.port), str(tmp_path / "obs.npz"),
                              str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120)
    finally:
        srv.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    ref = vla_policy.predict_action([obs["observation/image"], obs["observation/wrist_image"]], obs["prompt"],
                                    obs["observation/state"])
    assert out["actions"].dtype == np.float32 and out["actions"].shape == (8, 7) and int(out["chunk_len"]) == 8
    np.testing.assert_allclose(out["actions"], _env(ref), atol=1e-5)
    np.testing.assert_allclose(out["again"], _env(ref), atol=1e-5)
    assert "lacks key(s) prompt" in str(out["error"]) and float(out["infer_ms"]) > 0


# ----------------------------------------------------------------------------- B: bounds
def test_instruction_and_prompt_bounds_answer_with_errors(vla_policy):
    srv = PolicyServer(vla_policy, port=0, max_instruction_chars=200, max_prompt_tokens=40).start()
    try:
        images, proprio = [IMG, IMG], np.zeros(8, np.float32)
        with PolicyClient("127.0.0.1", srv.port) as client:
            assert client.metadata["limits"]["max_instruction_chars"] == 200
            with pytest.raises(LatentVLAError, match="201 characters; this server takes at most 200"):
                client.predict_action(images, "a" * 201, proprio)
            with pytest.raises(LatentVLAError, match=r"takes \d+ tokens; this server takes at most 40 "
                                                     r"\(--max_prompt_tokens\)"):
                client.predict_action(images, " ".join(["pick up the red block"] * 9), proprio)  # < 200 chars
            assert client.predict_action(images, "pick up the red block", proprio).shape == (8, 7)
    finally:
        srv.stop()


def test_oversized_frame_is_refused_and_the_client_reconnects():
    srv = PolicyServer(ZeroPolicy(LIBERO), port=0, max_message_bytes=64 * 1024).start()
    try:
        with PolicyClient("127.0.0.1", srv.port) as client:
            big = np.zeros((200, 200, 3), np.uint8)  # 120 kB
            with pytest.raises(LatentVLAError, match="over the server's --max_message_bytes"):
                client.predict_action([big], "x", np.zeros(8))
            assert client.predict_action([IMG], "x", np.zeros(8)).shape == (8, 7)
    finally:
        srv.stop()


class _GatedPolicy(RandomPolicy):
    """Blocks in predict_action until `gate` is set; batched calls (lists of instructions) are recorded."""

    supports_batch = True

    def __init__(self):
        super().__init__(LIBERO, seed=0)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = []

    def predict_action(self, images, instruction, proprio=None):
        self.entered.set()
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        batched = not isinstance(instruction, str)
        instructions = list(instruction) if batched else [instruction]
        self.calls.append(instructions)
        if "explode" in instructions:
            raise RuntimeError("policy bug")
        # row i encodes its own request: instruction "r<k>" -> actions all k
        out = np.stack([np.full((8, 7), float(s[1:]) if s.startswith("r") else -1.0, np.float32) for s in instructions])
        return out if batched else out[0]


def test_slow_inference_does_not_block_other_connections_and_queued_requests_batch():
    policy = _GatedPolicy()
    srv = PolicyServer(policy, port=0, max_batch_size=4, batch_wait_ms=0).start()
    replies = {}

    def ask(k):
        with PolicyClient("127.0.0.1", srv.port, timeout=30) as c:
            replies[k] = c.send_raw(packb({"images": [IMG], "instruction": f"r{k}", "proprio": np.zeros(8)}))

    try:
        first = threading.Thread(target=ask, args=(0,))
        first.start()
        assert policy.entered.wait(10)  # the model thread is now stuck in request 0
        # meanwhile: new connections get their metadata, pings and malformed requests are answered
        t0 = time.perf_counter()
        with PolicyClient("127.0.0.1", srv.port, timeout=5) as other:
            other._ws.ping().wait(5)
            assert other.send_raw(b"\xc1junk")["ok"] is False
            assert "at most 1000" in other.send_raw(packb({"images": [IMG], "instruction": "y" * 5000,
                                                           "proprio": np.zeros(8)}))["error"]
        assert time.perf_counter() - t0 < 5
        threads = [threading.Thread(target=ask, args=(k,)) for k in range(1, 7)]
        for t in threads:
            t.start()
        deadline = time.time() + 10
        while srv._queue.qsize() < 6 and time.time() < deadline:
            time.sleep(0.01)
        assert srv._queue.qsize() == 6
        policy.gate.set()
        for t in [first, *threads]:
            t.join(30)
    finally:
        policy.gate.set()
        srv.stop()
    assert sorted(replies) == list(range(7))
    for k, r in replies.items():
        assert r["ok"] is True and np.all(r["actions"] == k), k  # each client got its own row
    # request 0 alone, then the six queued ones in batches of at most 4
    assert [len(c) for c in policy.calls] == [1, 4, 2]
    assert sorted(replies[k]["server_timing"]["batch_size"] for k in range(1, 7)) == [2, 2, 4, 4, 4, 4]


def test_a_failing_request_in_a_batch_only_fails_itself():
    policy = _GatedPolicy()
    srv = PolicyServer(policy, port=0, max_batch_size=8, batch_wait_ms=0).start()
    replies = {}

    def ask(k, instruction):
        with PolicyClient("127.0.0.1", srv.port, timeout=30) as c:
            replies[k] = c.send_raw(packb({"images": [IMG], "instruction": instruction, "proprio": np.zeros(8)}))

    try:
        threads = [threading.Thread(target=ask, args=(0, "r0"))]
        threads[0].start()
        assert policy.entered.wait(10)
        threads += [threading.Thread(target=ask, args=(k, "explode" if k == 2 else f"r{k}")) for k in (1, 2, 3)]
        for t in threads[1:]:
            t.start()
        deadline = time.time() + 10
        while srv._queue.qsize() < 3 and time.time() < deadline:
            time.sleep(0.01)
        policy.gate.set()
        for t in threads:
            t.join(30)
    finally:
        policy.gate.set()
        srv.stop()
    assert replies[2]["ok"] is False and "policy bug" in replies[2]["error"]
    assert all(replies[k]["ok"] and np.all(replies[k]["actions"] == k) for k in (0, 1, 3))
    assert srv.requests_served == 3


def test_batched_answers_equal_single_answers(vla_server, vla_policy):
    """Queued requests of different instruction lengths and frame sizes run as one batch, each equal to its own call."""
    rng = np.random.default_rng(3)
    prompts = ["open the drawer", "put the bowl on top of the cabinet and then push the plate to the front", "x",
               "pick up the black bowl between the plate and the ramekin", "turn on the stove", "close it"]
    sides = [(64, 64), (96, 80), (64, 64), (128, 128), (70, 90), (64, 64)]
    obs = [_openpi_obs(rng, p, s) for p, s in zip(prompts, sides, strict=True)]
    replies = {}

    def ask(k):
        c = _Raw(vla_server.port, headers={"Authorization": "Bearer s3cret"})
        try:
            replies[k] = _openpi_decode(c.ask(packb(obs[k], openpi=True)))
        finally:
            c.close()

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(obs))]
    with vla_server._lock:  # the model is "busy": every request queues (the first batch waits for the lock)
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while vla_server.requests_received < len(obs) and time.time() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(60)
    assert sorted(replies) == list(range(len(obs)))
    sizes = [r["server_timing"]["batch_size"] for r in replies.values()]
    assert max(sizes) >= len(obs) // 2 and sum(1 / s for s in sizes) <= 2 + 1e-9  # at most two model calls
    for k, o in enumerate(obs):
        single = vla_policy.predict_action([o["observation/image"], o["observation/wrist_image"]], o["prompt"],
                                           o["observation/state"])
        np.testing.assert_allclose(replies[k]["actions"], single, atol=1e-5, rtol=0)


def test_serve_config_bounds():
    from latentvla.config import parse_config
    from latentvla.serve.configuration_serve import ServeConfig

    cfg = parse_config(ServeConfig, ["--policy", "zero", "--openpi_image_keys", "a/b,c", "--max_batch_size", "1"])
    cfg.validate()
    from latentvla.serve import protocol

    defaults = ServeConfig()  # the light config module repeats the protocol's defaults
    assert (defaults.max_message_bytes, defaults.max_instruction_chars, defaults.max_prompt_tokens) == (
        protocol.DEFAULT_MAX_MESSAGE_BYTES, protocol.DEFAULT_MAX_INSTRUCTION_CHARS, protocol.DEFAULT_MAX_PROMPT_TOKENS)
    assert tuple(defaults.openpi_image_keys) == OpenpiKeys().image_keys and defaults.openpi_prompt_key == "prompt"
    assert cfg.openpi_image_keys == ["a/b", "c"] and cfg.max_message_bytes == 16 * 2**20 and cfg.max_batch_size == 1
    for flag, value, match in [("max_batch_size", 0, "--max_batch_size must be at least 1"),
                               ("max_message_bytes", 10, "--max_message_bytes must be at least 1024"),
                               ("batch_wait_ms", -1.0, "--batch_wait_ms must be in 0..1000"),
                               ("openpi_image_keys", [], "--openpi_image_keys needs at least one")]:
        with pytest.raises(LatentVLAError, match=match):
            ServeConfig(policy="zero", **{flag: value}).validate()
    with pytest.raises(LatentVLAError, match="openpi_actions must be"):
        PolicyServer(ZeroPolicy(LIBERO), port=0, openpi_actions="env")
    with pytest.raises(LatentVLAError, match="needs a platform with a gripper dim"):
        PolicyServer(ZeroPolicy(dataclasses.replace(LIBERO, name="nogrip", gripper_dim=None)), port=0,
                     openpi_actions="libero_env")
    srv = PolicyServer(ZeroPolicy(LIBERO), port=0)
    assert srv.batching is False and srv.metadata["limits"]["max_batch_size"] == 1  # baselines take one at a time
    assert json.dumps(srv.metadata)  # plain values only: any client reads it
