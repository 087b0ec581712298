"""Reliability (docs/reliability.md): every failure is one clear error, every kill is resumable.

One section per class of failure, each tested on real files and, for kills, real SIGKILLs of a
child process (this file is also that child's script: `python tests/test_reliability.py MODE ...`):
1. OS errors on user paths (unreadable shard / features.json, unwritable or file-blocked output)
   are one line naming the path, and outputs are checked before any heavy work;
2. truncated weight files are named; `--resume` falls back to the newest intact checkpoint;
3. a torn last line of metrics.jsonl (SIGKILL mid-write) does not block resume;
4. temporaries of killed checkpoint writers are removed at the next start, a live writer's never;
6. garbage record payloads, resuming a run that does not exist, symlink loops.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
KILL_STEP = 5  # the child is killed during step 5's log line / step 6's checkpoint (checkpoints every 3 steps)


# ----------------------------------------------------------------------------- helpers

def cli(capsys, *argv):
    from latentvla.cli import main

    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _drop_permission_override():  # preexec_fn: root then meets file permissions like any user
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped from the bounding set before exec
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli_unprivileged(*argv, timeout: int = 120) -> subprocess.CompletedProcess:
    """`latentvla ...` in a child process for which file permissions hold (also when we are root)."""
    kw = {"preexec_fn": _drop_permission_override} if os.geteuid() == 0 else {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "latentvla", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


@pytest.fixture
def permissions_enforced(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    kw = {"preexec_fn": _drop_permission_override} if os.geteuid() == 0 else {}
    try:
        r = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}).read()"], capture_output=True, **kw)
    except (OSError, subprocess.SubprocessError):
        r = None
    probe.unlink()
    if r is None or r.returncode == 0:
        pytest.skip("file permissions cannot be enforced for a child process here")


def _data(root: Path, name: str = "libero_goal_no_noops") -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root, name, num_episodes=2, steps=6, image_size=24)
    return root / name / "1.0.0"


def _one_line_error(err: str, command: str) -> str:
    assert err.startswith(f"latentvla {command}: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- toy training (and the child)

def _toy(run_dir: Path, *, resume=None, logger_cls=None, save_weights=None, callbacks=(), steps: int = 8):
    import torch
    from train_toy import ToyDataset, ToyModel, ToySampler

    from latentvla.train import distributed as D
    from latentvla.train.loggers import JSONLLogger
    from latentvla.train.trainer import LoopSettings, Trainer, default_save_weights

    torch.manual_seed(0)
    ds = ToyDataset(n=40)
    s = LoopSettings(per_device_batch_size=4, accumulation_steps=2, max_steps=steps, learning_rate=0.05,
                     lr_scheduler_type="linear-warmup+cosine-decay", warmup_ratio=0.25, save_step=3,
                     keep_checkpoints=2, progress=False)
    resume_step = int(Path(resume).name.split("_")[-1]) if resume else None
    logger = (logger_cls or JSONLLogger)(Path(run_dir) / "metrics.jsonl", resume_step=resume_step)
    tr = Trainer(ToyModel(0.2), ds, ToySampler(len(ds), seed=1), s, info=D.DistInfo(0, 1, 0, torch.device("cpu")),
                 run_dir=run_dir, logger=logger, save_weights=save_weights or default_save_weights,
                 callbacks=list(callbacks), resume_from=resume)
    return tr, logger


def _fit(run_dir: Path, **kw) -> list[dict]:
    tr, lg = _toy(run_dir, **kw)
    tr.fit()
    lg.close()
    return _records(run_dir)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _child(mode: str, out: str) -> None:
    """Train the toy model in `out` and stall, mid-write, where the parent kills us with SIGKILL."""
    import torch

    from latentvla.train.loggers import JSONLLogger
    from latentvla.train.trainer import default_save_weights

    torch.set_num_threads(1)
    out_dir = Path(out)

    def stall():
        (out_dir / "stalled").write_text(str(os.getpid()))
        time.sleep(120)

    class TearingLogger(JSONLLogger):
        def log(self, step, metrics):
            if mode == "log" and step == KILL_STEP:
                line = json.dumps({"step": step, **metrics}) + "\n"
                self._f.write(line[: len(line) // 2])  # half a record on disk, as a kill mid-write leaves it
                self._f.flush()
                stall()
            super().log(step, metrics)

    def slow_save(directory, state):
        default_save_weights(directory, state)
        if mode == "save" and (directory.name.startswith(".step_6.tmp-")):
            stall()  # killed with the weights written, the optimizer state not yet

    _fit(out_dir, logger_cls=TearingLogger, save_weights=slow_save)


def _kill_child_when_stalled(mode: str, out: Path) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, __file__, mode, str(out)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "stalled").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "the child never reached the kill point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# ----------------------------------------------------------------------------- 1. OS errors

def test_unreadable_shard_and_features_json_are_one_line_errors(tmp_path, permissions_enforced):
    version = _data(tmp_path)
    from latentvla.data.tfds import TFDSBuilderDir

    shard = TFDSBuilderDir(version).shard_paths("train")[0]
    shard.chmod(0)
    r = cli_unprivileged("data", "stats", "--data_root_dir", tmp_path, "--data_mix", "libero_goal")
    assert r.returncode == 2, r.stderr[-2000:]
    err = _one_line_error(r.stderr, "data stats")
    assert f"{shard}: permission denied" in err
    shard.chmod(0o644)
    (version / "features.json").chmod(0)
    r = cli_unprivileged("data", "inspect", "--data_root_dir", tmp_path, "--data_mix", "libero_goal")
    assert r.returncode == 2
    assert f"{version / 'features.json'}: permission denied" in _one_line_error(r.stderr, "data inspect")


def test_unwritable_run_root_fails_before_the_backbone_loads(capsys, tmp_path, tiny_vlm_dir, vla_data_root,
                                                             permissions_enforced):
    flags = ["--vlm_path", tiny_vlm_dir, "--data_root_dir", vla_data_root, "--data_mix", "libero_goal",
             "--max_steps", "1", "--progress", "False"]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc, out, err = cli(capsys, "train", *flags, "--run_root_dir", blocker / "runs")
    assert rc == 2 and f"{blocker} is a regular file" in _one_line_error(err, "train") and "parameters" not in out
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # what a read-only file system looks like to the probe (EROFS is reported the same way)
    t0 = time.time()
    r = cli_unprivileged("train", *flags, "--run_root_dir", locked / "runs")
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"cannot write (in {locked}" in _one_line_error(r.stderr, "train") and "permission denied" in r.stderr
    assert "parameters" not in r.stdout and time.time() - t0 < 60
    assert not (locked / "runs").exists()


def test_lam_outputs_are_checked_before_work(capsys, tmp_path):
    _data(tmp_path / "data")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, _, err = cli(capsys, "lam", "action-train", "--data_root_dir", tmp_path / "data", "--data_mix", "libero_goal",
                     "--results_dir", blocker / "tok")
    assert rc == 2 and "--results_dir" in _one_line_error(err, "lam action-train")
    assert f"{blocker} is a regular file" in err


def test_os_error_text_names_the_path():
    import errno

    from latentvla.errors import format_error

    assert format_error(PermissionError(errno.EACCES, "Permission denied", "/d/x.tfrecord")).startswith(
        "/d/x.tfrecord: permission denied")
    assert format_error(OSError(errno.EROFS, "Read-only file system", "/ro/run")) == \
        "/ro/run: read-only file system (choose a writable location)"
    # an error raised in a DataLoader worker arrives re-created from its traceback text
    worker = ("Caught PermissionError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
              '  File "x.py", line 1, in f\nPermissionError: [Errno 13] Permission denied: \'/d/s.tfrecord\'\n')
    assert format_error(PermissionError(worker)).startswith("/d/s.tfrecord: permission denied")
    from latentvla.errors import LatentVLAError

    wrapped = worker.replace("PermissionError", "LatentVLAError").replace("[Errno 13] Permission denied: "
                                                                          "'/d/s.tfrecord'",
                                                                         "/d/s.tfrecord: bad record")
    assert format_error(LatentVLAError(wrapped)) == "/d/s.tfrecord: bad record"
    assert format_error(RuntimeError("a bug")) is None  # a bug keeps its traceback


# ----------------------------------------------------------------------------- 2. truncated weights

def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def test_truncated_backbone_weights_are_named(capsys, tmp_path, tiny_vlm_dir, vla_data_root):
    vlm = tmp_path / "vlm"
    shutil.copytree(tiny_vlm_dir, vlm)
    (weights,) = vlm.glob("*.safetensors")
    _truncate(weights)
    rc, _, err = cli(capsys, "train", "--vlm_path", vlm, "--data_root_dir", vla_data_root, "--data_mix", "libero_goal",
                     "--run_root_dir", tmp_path / "runs", "--max_steps", "1")
    assert rc == 2 and f"{weights}: truncated or corrupt safetensors file" in _one_line_error(err, "train")
    from latentvla.errors import LatentVLAError
    from latentvla.vla.backbone import load_backbone
    from latentvla.vla.configuration_vla import VLAConfig

    with pytest.raises(LatentVLAError, match="truncated or corrupt safetensors"):  # serve / eval load it this way
        load_backbone(VLAConfig(vlm_path=str(vlm)), "cpu")


def test_truncated_policy_checkpoint_is_named(tmp_path, tiny_vlm_dir):
    """What `VLAPolicy.from_pretrained`, `eval libero` and `serve` load: the file is named before any model is built."""
    import torch
    from safetensors.torch import save_file

    from latentvla.errors import LatentVLAError
    from latentvla.robots import get_platform
    from latentvla.vla.checkpoint import FORMAT, library_versions, load_policy_model

    ckpt = tmp_path / "step_2"
    ckpt.mkdir()
    config = {"format": FORMAT, "format_version": 1, "vla": {"vlm_path": str(tiny_vlm_dir)},
              "platform": get_platform("libero").to_dict(), "train": {}}
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "dataset_statistics.json").write_text("{}")
    (ckpt / "versions.json").write_text(json.dumps(library_versions()))
    save_file({"action_head.w": torch.zeros(64, 64)}, str(ckpt / "model.safetensors"))
    _truncate(ckpt / "model.safetensors", 0.9)
    with pytest.raises(LatentVLAError, match="step_2/model.safetensors: truncated or corrupt safetensors file"):
        load_policy_model(ckpt)


def _resume_cfg(runs: Path, **over):
    from latentvla.train.configuration_train import TrainConfig

    return TrainConfig(run_root_dir=str(runs), run_id="toy", resume=True, keep_checkpoints=2, **over)


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    """Newest checkpoint truncated: resume says so, sets it aside (nothing deleted) and continues
    from the older one that still has its training state; the losses equal an uninterrupted run."""
    from latentvla.train.checkpointing import TRAINING_STATE
    from latentvla.train.run import _prepare_run_dir

    full = _fit(tmp_path / "full")
    run = tmp_path / "runs" / "toy"
    kept = {}

    class Crash(Exception):
        pass

    def keep_and_crash(step, rec):
        if step == 3:  # step_3 is the newest checkpoint now: it still has its training state
            kept["state"] = (run / "checkpoints" / "step_3" / TRAINING_STATE).read_bytes()
        if step == 7:
            raise Crash()

    with pytest.raises(Crash):
        _fit(run, callbacks=[keep_and_crash])
    assert not (run / "checkpoints" / "step_3" / TRAINING_STATE).exists()  # pruned once step_6 was complete
    # As if killed between publishing step_6 and pruning step_3's training state; then step_6 is truncated.
    (run / "checkpoints" / "step_3" / TRAINING_STATE).write_bytes(kept["state"])
    _truncate(run / "checkpoints" / "step_6" / "model.safetensors")
    capsys.readouterr()
    run_dir, resume_from = _prepare_run_dir(_resume_cfg(tmp_path / "runs"))
    out = capsys.readouterr().out
    assert resume_from == run / "checkpoints" / "step_3"
    assert "step_6 is damaged (model.safetensors: truncated or corrupt safetensors file" in out
    assert (run / "checkpoints" / "step_6.damaged" / "model.safetensors").is_file()  # kept, out of the way
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_3"
    resumed = _fit(run, resume=resume_from)
    assert [r["step"] for r in resumed] == list(range(1, 9))
    assert [(r["loss"], r["grad_norm"]) for r in resumed] == [(r["loss"], r["grad_norm"]) for r in full]
    assert (run / "checkpoints" / "step_6.damaged").is_dir() and (run / "checkpoints" / "step_6").is_dir()


def test_resume_without_an_intact_training_state_says_what_to_do(capsys, tmp_path, tiny_vlm_dir, vla_data_root):
    from latentvla.errors import LatentVLAError
    from latentvla.train.run import _prepare_run_dir

    run = tmp_path / "runs" / "toy"
    _fit(run, steps=6)  # step_3 (weights only), step_6 (weights + training state)
    state = run / "checkpoints" / "step_6" / "training_state.pt"
    _truncate(state)
    with pytest.raises(LatentVLAError) as e:
        _prepare_run_dir(_resume_cfg(tmp_path / "runs"))
    msg = str(e.value)
    assert f"{state}: truncated or corrupt torch.save file" in msg and "only the newest checkpoint" in msg
    # the weights of step_6 are intact: they are the warm start offered
    assert f"--from_pretrained True --pretrained_checkpoint {run / 'checkpoints' / 'step_6'}" in msg
    weights = run / "checkpoints" / "step_6" / "model.safetensors"
    _truncate(weights)
    rc, _, err = cli(capsys, "train", "--vlm_path", tiny_vlm_dir, "--data_root_dir", vla_data_root, "--data_mix",
                     "libero_goal", "--run_root_dir", tmp_path / "runs", "--run_id", "toy", "--resume", "True",
                     "--max_steps", "8")
    err = _one_line_error(err, "train")
    assert f"{weights}: truncated or corrupt safetensors file" in err
    assert f"--pretrained_checkpoint {run / 'checkpoints' / 'step_3'}" in err
    assert "(no checkpoint was deleted or changed)" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_3", "step_6"]
    # loading such a file directly names it too
    from latentvla.train.trainer import default_load_weights

    with pytest.raises(LatentVLAError, match="step_6/model.safetensors: truncated"):
        default_load_weights(run / "checkpoints" / "step_6", None)


# ----------------------------------------------------------------------------- 3. torn metrics.jsonl

def test_sigkill_while_logging_leaves_a_torn_line_that_resume_drops(tmp_path, capsys):
    from latentvla.train.checkpointing import CheckpointManager

    full = _fit(tmp_path / "full")
    run = tmp_path / "killed"
    _kill_child_when_stalled("log", run)
    text = (run / "metrics.jsonl").read_text()
    assert not text.endswith("\n") and f'"step": {KILL_STEP}' in text.splitlines()[-1]  # a torn last record
    point = CheckpointManager(run / "checkpoints").resume_point()
    assert point.path.name == "step_3"
    resumed = _fit(run, resume=point.path)
    assert "its last line is cut off" in capsys.readouterr().err
    assert resumed == [{**r, "samples_per_s": resumed[i]["samples_per_s"],
                        "data_wait_fraction": resumed[i]["data_wait_fraction"]} for i, r in enumerate(full)]


# ----------------------------------------------------------------------------- 4. stale temporaries

def test_sigkill_during_a_checkpoint_save_leaves_temps_removed_at_next_start(tmp_path, capsys):
    from latentvla.utils.atomic import _host

    run = tmp_path / "killed"
    _kill_child_when_stalled("save", run)
    ckpts = run / "checkpoints"
    (stale,) = [p for p in ckpts.iterdir() if p.name.startswith(".step_6.tmp-")]
    assert (stale / "model.safetensors").is_file() and not (stale / "training_state.pt").exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        mine = ckpts / f".step_9.tmp-{live.pid}@{_host()}-abcd1234"  # a writer that is still running
        other = ckpts / ".step_9.tmp-1@another_host-abcd1234"  # written on another machine
        mine.mkdir()
        other.mkdir()
        capsys.readouterr()
        tr, lg = _toy(run, resume=ckpts / "step_3")
        out = capsys.readouterr().out
        assert f"removed 1 temporary file(s) left by killed writers in {ckpts}: {stale.name}" in out
        assert "written on another host alone" in out and str(other) in out
        assert not stale.exists() and mine.is_dir() and other.is_dir()
        tr.fit()
        lg.close()
        assert (ckpts / "step_6").is_dir() and mine.is_dir()
    finally:
        live.kill()
        live.wait()
    from latentvla.train.checkpointing import CheckpointManager

    assert CheckpointManager(ckpts).clean_stale_temps().removed == [mine]  # its writer is gone now


def test_a_finished_checkpoint_whose_swap_was_cut_is_restored(tmp_path):
    from latentvla.train.checkpointing import COMPLETE_MARKER, CheckpointManager
    from latentvla.utils.atomic import _host

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "checkpoints"
    done = root / f".step_4.tmp-{dead.pid}@{_host()}-aaaa1111"  # complete, killed before its rename
    partial = root / f".step_4.tmp-{dead.pid}@{_host()}-bbbb2222"
    for d in (done, partial):
        d.mkdir(parents=True)
    (done / COMPLETE_MARKER).write_text("4\n")
    os.utime(partial, (time.time() - 60, time.time() - 60))
    found = CheckpointManager(root).clean_stale_temps()
    assert found.restored == [(done, root / "step_4")] and found.removed == [partial]
    assert CheckpointManager(root).latest() == root / "step_4"


# ----------------------------------------------------------------------------- 6. small ones

def test_garbage_payload_with_valid_crcs_names_shard_and_offset(capsys, tmp_path):
    import numpy as np

    from latentvla.data.tfds import TFDSBuilderDir
    from latentvla.data.tfrecord import frame_record, iter_records

    version = _data(tmp_path)
    shard = TFDSBuilderDir(version).shard_paths("train")[0]
    records = list(iter_records(shard))
    offset = records[1][0]
    payloads = [d for _, d in records]
    payloads[1] = np.random.default_rng(0).bytes(len(payloads[1]))
    shard.write_bytes(b"".join(frame_record(p) for p in payloads))
    rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", tmp_path, "--data_mix", "libero_goal")
    assert rc == 2 and f"{shard} (record at offset {offset}, episode 1): not a valid tf.train.Example" in \
        _one_line_error(err, "data stats")
    from latentvla.errors import LatentVLAError

    with pytest.raises(LatentVLAError, match=f"record at offset {offset}\\): not a valid tf.train.Example"):
        TFDSBuilderDir(version).read_episode(1)


def test_resume_of_a_run_that_does_not_exist_is_refused(capsys, tmp_path, tiny_vlm_dir, vla_data_root):
    from latentvla.train.run import _prepare_run_dir

    runs = tmp_path / "runs"
    _fit(runs / "my_run", steps=3)
    rc, _, err = cli(capsys, "train", "--vlm_path", tiny_vlm_dir, "--data_root_dir", vla_data_root, "--data_mix",
                     "libero_goal", "--run_root_dir", runs, "--run_id", "my_rnu", "--resume", "True", "--max_steps",
                     "1")
    err = _one_line_error(err, "train")
    assert f"no run directory {runs / 'my_rnu'}" in err and "did you mean --run_id my_run?" in err
    assert "--resume_or_start True" in err and not (runs / "my_rnu").exists()
    # resubmitted job scripts: --resume_or_start starts the run the first time
    cfg = _resume_cfg(runs, resume_or_start=True)
    cfg.resume, cfg.run_id = False, "fresh"
    assert _prepare_run_dir(cfg) == (runs / "fresh", None)
    # a run dir that exists but never finished a checkpoint: started again, loudly
    (runs / "early").mkdir()
    cfg.run_id, cfg.resume, cfg.resume_or_start = "early", True, False
    capsys.readouterr()
    assert _prepare_run_dir(cfg) == (runs / "early", None)
    assert "holds no complete checkpoint" in capsys.readouterr().out


def test_symlink_loop_is_named_not_an_unknown_dataset(capsys, tmp_path):
    for name in ("libero_goal_no_noops", "metaworld_loop"):
        (tmp_path / name).symlink_to(tmp_path / name)
        rc, _, err = cli(capsys, "data", "stats", "--data_root_dir", tmp_path, "--data_mix", name)
        assert rc == 2 and f"{tmp_path / name}: symbolic link loop" in _one_line_error(err, "data stats"), err
        assert "unknown dataset" not in err


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _child(sys.argv[1], sys.argv[2])
