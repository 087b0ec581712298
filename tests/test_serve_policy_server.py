"""Policy server and client over a real loopback websocket."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest

from latentvla.errors import LatentVLAError
from latentvla.eval.policies import RandomPolicy, ZeroPolicy
from latentvla.robots import get_platform
from latentvla.serve.client import PolicyClient
from latentvla.serve.protocol import packb, unpackb
from latentvla.serve.server import PolicyServer

IMG = np.zeros((64, 64, 3), np.uint8)


class _RecordingPolicy(RandomPolicy):
    """RandomPolicy that remembers what reached it (the server must pass inputs through unchanged)."""

    def predict_action(self, images, instruction, proprio=None):
        self.last = (images, instruction, proprio)
        if instruction == "explode":
            raise RuntimeError("policy bug")
        return super().predict_action(images, instruction, proprio)


@pytest.fixture
def server():
    srv = PolicyServer(_RecordingPolicy(get_platform("libero"), seed=0), port=0).start()
    yield srv
    srv.stop()


def test_client_gets_actions_and_metadata(server):
    with PolicyClient("127.0.0.1", server.port) as client:
        assert client.platform.name == "libero" and client.chunk_len == 8 and client.num_images == 2
        wrist = np.full((32, 48, 3), 7, np.uint8)
        actions = client.predict_action([IMG, wrist], "open the drawer", np.arange(8, dtype=np.float32))
        assert actions.shape == (8, 7) and actions.dtype == np.float32
        images, instruction, proprio = server.policy.last
        assert [im.shape for im in images] == [(64, 64, 3), (32, 48, 3)] and np.array_equal(images[1], wrist)
        assert instruction == "open the drawer" and np.array_equal(proprio, np.arange(8))
        # a stacked [N, H, W, 3] array is accepted too
        assert client.predict_action(np.stack([IMG, IMG]), "x", np.zeros(8)).shape == (8, 7)


def test_malformed_requests_get_errors_and_server_keeps_serving(server):
    good = {"type": "predict_action", "images": [IMG], "instruction": "go", "proprio": np.zeros(8, np.float32)}
    bad_array = {"__ndarray__": True, "dtype": "<f4", "shape": [3], "data": b"\x00" * 5}
    malformed = {
        "not msgpack": b"\xc1\xc1garbage",
        "text frame": "hello",
        "not a map": packb([1, 2, 3]),
        "missing instruction": packb({"images": [IMG]}),
        "missing images": packb({"instruction": "go", "proprio": np.zeros(8)}),
        "float image": packb({**good, "images": [IMG.astype(np.float32)]}),
        "2-D image": packb({**good, "images": [IMG[:, :, 0]]}),
        "4-channel image": packb({**good, "images": [np.zeros((8, 8, 4), np.uint8)]}),
        "too many images": packb({**good, "images": [IMG, IMG, IMG]}),
        "wrong proprio size": packb({**good, "proprio": np.zeros(5, np.float32)}),
        "NaN proprio": packb({**good, "proprio": np.full(8, np.nan, np.float32)}),
        "missing proprio": packb({k: v for k, v in good.items() if k != "proprio"}),
        "empty instruction": packb({**good, "instruction": "  "}),
        "unknown type": packb({**good, "type": "train"}),
        "array size mismatch": msgpack.packb({**{k: v for k, v in good.items() if k != "proprio"}, "images": [IMG],
                                              "proprio": bad_array},
                                             default=lambda o: o.tolist() if isinstance(o, np.ndarray) else o),
        "policy error": packb({**good, "instruction": "explode"}),
    }
    with PolicyClient("127.0.0.1", server.port) as client:
        for name, payload in malformed.items():
            reply = client.send_raw(payload)
            assert reply["ok"] is False and reply["error"], name
            assert client.predict_action([IMG], "still there?", np.zeros(8)).shape == (8, 7), name
        with pytest.raises(LatentVLAError, match="must be uint8"):
            client.predict_action([IMG.astype(np.float64)], "x", np.zeros(8))
    # the server also still accepts new connections
    with PolicyClient("127.0.0.1", server.port) as again:
        assert again.predict_action([IMG], "x", np.zeros(8)).shape == (8, 7)
    assert server.requests_served == len(malformed) + 1


def test_error_messages_name_the_problem(server):
    with PolicyClient("127.0.0.1", server.port) as client:
        r = client.send_raw(packb({"images": [IMG], "instruction": "x", "proprio": np.zeros(5, np.float32)}))
        assert "proprio" in r["error"] and "size 8" in r["error"]
        r = client.send_raw(packb({"images": [IMG]}))
        assert "instruction" in r["error"]


def test_token_required_when_set():
    srv = PolicyServer(ZeroPolicy(get_platform("libero")), port=0, token="s3cret").start()
    try:
        for token in (None, "wrong"):
            with pytest.raises(LatentVLAError, match="HTTP 401"):
                PolicyClient("127.0.0.1", srv.port, token=token)
        with PolicyClient("127.0.0.1", srv.port, token="s3cret") as client:
            assert np.all(client.predict_action([IMG], "x", np.zeros(8))[:, 6] == 1.0)
    finally:
        srv.stop()


def test_client_connection_refused_is_a_clear_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LatentVLAError, match="cannot connect"):
        PolicyClient("127.0.0.1", port, timeout=5)


def test_protocol_roundtrip():
    obj = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": [np.float32(1.5), "s"], "c": None}
    out = unpackb(packb(obj))
    assert np.array_equal(out["a"], obj["a"]) and out["a"].dtype == np.int16 and out["b"] == [1.5, "s"]
    with pytest.raises(TypeError):
        packb({"x": np.array(["s"], dtype=object)})


def test_serve_cli_answers_a_client(tmp_path):
    env = {**os.environ, "LATENTVLA_TOKEN": "tok"}
    proc = subprocess.Popen([sys.executable, "-m", "latentvla.cli", "serve", "--policy", "zero", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, line = time.time() + 60, ""
        while time.time() < deadline:
            line = proc.stdout.readline()
            if "listening on ws://" in line or not line:
                break
        assert "listening on ws://127.0.0.1:" in line, line
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        with PolicyClient("127.0.0.1", port, token="tok") as client:
            assert client.predict_action([IMG], "x", np.zeros(8)).shape == (8, 7)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run([sys.executable, "-m", "latentvla.cli", "serve", "--policy", "vla"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--pretrained_checkpoint" in bad.stderr


def test_server_prepares_images_as_training_did():
    """Frames of any size are resized (and center-cropped) to the policy's training size on the server."""
    from latentvla.data.transforms import center_crop_params, process_image

    policy = _RecordingPolicy(get_platform("libero"), seed=0)
    policy.image_size = 32
    srv = PolicyServer(policy, port=0, center_crop=True, image_resample="lanczos").start()
    try:
        with PolicyClient("127.0.0.1", srv.port) as client:
            assert client.image_size == 32 and client.center_crop is True and client.image_resample == "lanczos"
            frame = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
            client.predict_action([frame, frame], "x", np.zeros(8))
            (img, _), _, _ = policy.last
            assert img.shape == (32, 32, 3)
            assert np.array_equal(img, process_image(frame, 32, center_crop_params(), "lanczos"))
        # a policy that prepares frames itself (VLAPolicy.prepare_images) gets them raw: no double crop
        policy.prepare_images = lambda images: images
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.predict_action([frame, frame], "x", np.zeros(8))
            (img, _), _, _ = policy.last
            assert np.array_equal(img, frame)
    finally:
        srv.stop()
