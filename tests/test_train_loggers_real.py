"""The metric-logger adapters against the real W&B, SwanLab and TensorBoard packages, offline.

Opt-in: each test is skipped unless its package is installed (CI installs none of them; run them
with `pip install wandb swanlab tensorboard`). Nothing is stood in for: every check reads back what
the backend itself wrote to disk (W&B's offline run file, SwanLab's offline run file, TensorBoard's
event files). tests/test_train_loop.py covers the same adapters against stand-in modules.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

from latentvla.cli import main
from latentvla.errors import LatentVLAError
from latentvla.train.loggers import build_loggers

CONFIG = {"learning_rate": 0.1, "derived": {"world_size": 1}, "run_id": None}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline modes, and each package's user-level state (login, caches) under tmp_path."""
    home = tmp_path / "home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    monkeypatch.setenv("SWANLAB_ROOT", str(home / "swanlab"))
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.delenv("ENABLE_SWANLAB", raising=False)
    # wandb reads its environment once per process (its setup singleton): start from a fresh one.
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()
    yield tmp_path / "run"
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()


def _crash_then_resume(run_dir: Path, **backends) -> None:
    """Steps 1-3, a crash (the logger is closed while the error is handled, as run.py does), then a
    resume from the step-2 checkpoint that redoes step 3 (with another value) and logs step 4."""
    lg = build_loggers(run_dir, resume_step=None, run_name="exp:1#a", config=CONFIG, **backends)
    for step in (1, 2, 3):
        lg.log(step, {"loss": 1.0 / step, "lr": 0.1, "epoch": 0})
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            lg.close()
            raise
    lg = build_loggers(run_dir, resume_step=2, run_name="exp:1#a", config=CONFIG, **backends)
    for step in (3, 4):
        lg.log(step, {"loss": 10.0 + step, "lr": 0.1, "epoch": 0})
    lg.close()
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def _wandb_records(path: Path) -> list:
    """Records of a .wandb file: W&B's LevelDB-log framing (32 KiB blocks, 7-byte chunk headers)."""
    import wandb
    from wandb.proto import wandb_internal_pb2 as pb

    wandb.teardown()  # waits for wandb's service process to have written everything
    data = path.read_bytes()
    if data[:4] != b":W&B":
        pytest.skip(f"unknown .wandb file format in this wandb version ({data[:7]!r})")
    out, pos, buf, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # block trailer padding
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _wandb_items(items) -> dict:
    """A history / config record's items as {key: value} (newer wandb fills nested_key, older key)."""
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def test_wandb_offline_records_config_steps_and_failure(offline):
    pytest.importorskip("wandb")
    _crash_then_resume(offline, use_wandb=True, wandb_project="proj")
    runs = list((offline / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2  # offline, a resume starts a second local run (same id) that continues the steps
    summary = []
    for path in runs:
        recs = _wandb_records(path)
        (run,) = [r.run for r in recs if r.HasField("run")]
        assert run.run_id == "exp_1_a" and run.display_name == "exp:1#a" and run.project == "proj"
        config = _wandb_items(run.config.update)
        assert config["learning_rate"] == 0.1 and config["derived"] == {"world_size": 1}
        history = [_wandb_items(r.history.item) for r in recs if r.HasField("history")]
        (exit_rec,) = [r.exit for r in recs if r.HasField("exit")]
        started = (run.start_time.seconds, run.start_time.nanos)
        summary.append((started, [(h["_step"], h["loss"]) for h in history], exit_rec.exit_code))
    assert [s[1:] for s in sorted(summary)] == [([(1, 1.0), (2, 0.5), (3, 1 / 3)], 1), ([(3, 13.0), (4, 14.0)], 0)]


def test_swanlab_offline_records_config_steps_and_failure(offline, monkeypatch):
    pytest.importorskip("swanlab")
    try:
        from swanlab.proto.swanlab.record.v1.record_pb2 import Record
        from swanlab.sdk.internal.core_python.store import DataStoreReader
    except ImportError:
        pytest.skip("this swanlab version has no offline run-file reader at the expected place")
    monkeypatch.setenv("ENABLE_SWANLAB", "1")
    _crash_then_resume(offline, wandb_project="proj")
    runs = list((offline / "swanlab").glob("run-*/run-*.swanlab"))
    assert len(runs) == 2
    summary = []
    for path in runs:
        reader = DataStoreReader()
        reader.open(path)
        recs = []
        for raw in reader:
            rec = Record()
            rec.ParseFromString(raw)
            recs.append(rec)
        reader.close()
        (start,) = [r.start for r in recs if r.HasField("start")]
        assert start.project == "proj" and start.name == "exp:1#a"
        scalars = [r.scalar for r in recs if r.HasField("scalar")]
        losses = [(x.step, x.value.number) for x in scalars if x.key == "loss"]
        (finish,) = [r.finish for r in recs if r.HasField("finish")]
        state = finish.DESCRIPTOR.fields_by_name["state"].enum_type.values_by_number[finish.state].name
        summary.append(((start.started_at.seconds, start.started_at.nanos), losses, state, finish.error))
        config = (path.parent / "files" / "config.yaml").read_text()
        assert "learning_rate:" in config and "world_size: 1" in config
    assert [s[1:] for s in sorted(summary)] == [
        ([(1, 1.0), (2, 0.5), (3, 1 / 3)], "RUN_STATE_CRASHED", "RuntimeError: boom"),
        ([(3, 13.0), (4, 14.0)], "RUN_STATE_FINISHED", "")]


def test_tensorboard_scalars_config_and_resume_purge(offline):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _crash_then_resume(offline, use_tensorboard=True)
    acc = EventAccumulator(str(offline / "tensorboard"))
    acc.Reload()
    assert {"loss", "lr", "epoch"} <= set(acc.Tags()["scalars"])
    # The resumed run's step 3 replaces the crashed run's (purge_step), so no step shows twice.
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 13.0), (4, 14.0)]
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = b"".join(e.tensor_proto.string_val[0] for e in acc.Tensors("config/text_summary")).decode()
    assert '"learning_rate": 0.1' in text


@pytest.mark.parametrize("backend", ["wandb", "swanlab"])
def test_backend_that_cannot_start_is_a_clear_error(offline, monkeypatch, backend):
    """A backend that fails in its init (here: a mode it does not know) is a LatentVLAError naming the
    fix; a backend already started (W&B before SwanLab) is closed and reported as failed."""
    pytest.importorskip(backend)
    monkeypatch.setenv(f"{backend.upper()}_MODE", "no-such-mode")
    if backend == "swanlab":
        pytest.importorskip("wandb")
        monkeypatch.setenv("ENABLE_SWANLAB", "1")
    name = "W&B" if backend == "wandb" else "SwanLab"
    with pytest.raises(LatentVLAError, match=f"(?s){name} could not start a run.*{backend.upper()}_MODE=offline"):
        build_loggers(offline, resume_step=None, run_name="r", config={}, use_wandb=True)
    if backend == "swanlab":
        (path,) = (offline / "wandb").glob("offline-run-*/run-*.wandb")
        assert [r.exit.exit_code for r in _wandb_records(path) if r.HasField("exit")] == [1]


# A mark, not importorskip, so that the session fixtures are not built for a test that is skipped.
@pytest.mark.skipif(any(importlib.util.find_spec(n) is None for n in ("wandb", "swanlab", "tensorboard")),
                    reason="needs wandb, swanlab and tensorboard")
def test_train_logs_to_every_backend(tmp_path, tiny_vlm_dir, vla_data_root, offline, monkeypatch):
    """`latentvla train` end to end with all three backends: each holds the steps metrics.jsonl holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("ENABLE_SWANLAB", "1")
    runs = tmp_path / "runs"
    argv = ["train", "--vlm_path", str(tiny_vlm_dir), "--vlm_model_id", "qwen3vl_tiny", "--data_root_dir",
            str(vla_data_root), "--data_mix", '["libero_goal"]', "--run_root_dir", str(runs), "--run_id", "e2e",
            "--vla_id", "baseline", "--default_image_size", "64", "--window_size", "8", "--max_steps", "2",
            "--global_batch_size", "1", "--per_device_batch_size", "1", "--lora_rank", "4", "--num_workers", "0",
            "--progress", "False", "--log_step", "1", "--save_checkpoint", "False",
            "--use_wandb", "True", "--wandb_project", "e2e", "--use_tensorboard", "True"]
    assert main(argv) == 0
    run_dir = runs / "e2e"
    jsonl = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [(r["step"], r["loss"]) for r in jsonl]
    assert [s for s, _ in expected] == [1, 2]

    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    recs = _wandb_records(wandb_file)
    hist = [_wandb_items(r.history.item) for r in recs if r.HasField("history")]
    assert [(h["_step"], h["loss"]) for h in hist] == expected
    assert {"l1", "lr", "grad_norm"} <= set(hist[0])
    (run,) = [r.run for r in recs if r.HasField("run")]
    assert _wandb_items(run.config.update)["vla_id"] == "baseline"

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(s, pytest.approx(v)) for s, v in expected]
    assert {"l1", "lr", "grad_norm"} <= set(acc.Tags()["scalars"])

    (swan_run,) = (run_dir / "swanlab").glob("run-*/run-*.swanlab")
    assert "vla_id:" in (swan_run.parent / "files" / "config.yaml").read_text()
