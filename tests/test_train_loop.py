"""The generic trainer on a toy model: schedules, checkpoints, exact resume, clipping, and
2-process torchrun DDP / FSDP2 giving the single-process loss curve (same global batch)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvla.errors import LatentVLAError
from latentvla.train import distributed as D
from latentvla.train.checkpointing import COMPLETE_MARKER, CheckpointManager
from latentvla.train.loggers import JSONLLogger
from latentvla.train.schedulers import lr_factor_fn
from latentvla.train.trainer import LoopSettings, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from train_toy import ToyDataset, ToyModel, ToySampler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CPU = D.DistInfo(0, 1, 0, torch.device("cpu"))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_schedules():
    const = lr_factor_fn("constant", 10)
    assert [const(s) for s in range(10)] == [1.0] * 10
    cos = lr_factor_fn("linear-warmup+cosine-decay", 100, warmup_ratio=0.1)
    warm = [cos(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] < 0.2 and cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.5, abs=0.02) and cos(99) < 0.01
    step = lr_factor_fn("step-decay", 100, decay_steps=[30, 60], gamma=0.5)
    assert (step(29), step(30), step(60)) == (1.0, 0.5, 0.25)
    assert lr_factor_fn("step-decay", 100)(80) == pytest.approx(0.1)  # default milestone: 80%
    with pytest.raises(LatentVLAError, match="constant"):
        lr_factor_fn("cosine", 10)


def test_checkpoint_manager_keeps_newest_complete(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        m.save(step, lambda d, s=step: (d / "w.txt").write_text(str(s)))
    assert [s for s, _ in m.complete()] == [2, 3]
    assert (tmp_path / "ck" / "latest").read_text().strip() == "step_3"
    # A directory without the marker (crashed writer) is never resumed from.
    (tmp_path / "ck" / "step_9").mkdir()
    assert m.latest().name == "step_3"
    with pytest.raises(RuntimeError):
        m.save(4, lambda d: (_ for _ in ()).throw(RuntimeError("crash")))
    assert not (tmp_path / "ck" / "step_4").exists() and m.latest().name == "step_3"
    assert (m.latest() / COMPLETE_MARKER).is_file()


def test_only_the_newest_checkpoint_keeps_training_state(tmp_path):
    """Optimizer + RNG state (2x the weights) lives in the newest checkpoint only; older ones are
    weights-only policies, and resuming from one says so instead of failing inside torch.load."""
    tr, lg = _trainer(tmp_path / "run", steps=8, save_step=3)  # checkpoints at 3, 6, 8; keep 2
    tr.fit()
    lg.close()
    done = CheckpointManager(tmp_path / "run" / "checkpoints").complete()
    assert [s for s, _ in done] == [6, 8]
    assert (done[-1][1] / "training_state.pt").is_file() and not (done[0][1] / "training_state.pt").exists()
    assert (done[0][1] / "model.safetensors").is_file()
    with pytest.raises(LatentVLAError, match="weights only.*--from_pretrained True"):
        _trainer(tmp_path / "run", resume=done[0][1])


def _trainer(run_dir, *, resume=None, callbacks=(), max_norm=1.0, dropout=0.2, accum=2, steps=8, save_step=3):
    torch.manual_seed(0)
    ds = ToyDataset(n=40)
    s = LoopSettings(per_device_batch_size=4, accumulation_steps=accum, max_steps=steps, learning_rate=0.05,
                     max_grad_norm=max_norm, lr_scheduler_type="linear-warmup+cosine-decay", warmup_ratio=0.25,
                     save_step=save_step, keep_checkpoints=2, progress=False)
    resume_step = int(Path(resume).name.split("_")[-1]) if resume else None
    logger = JSONLLogger(Path(run_dir) / "metrics.jsonl", resume_step=resume_step)
    tr = Trainer(ToyModel(dropout), ds, ToySampler(len(ds), seed=1), s, info=CPU, run_dir=run_dir, logger=logger,
                 callbacks=list(callbacks), resume_from=resume)
    return tr, logger


def test_resume_reproduces_uninterrupted_run(tmp_path):
    """Crash after step 5 (last checkpoint: step 3), resume: steps 4.. equal the uninterrupted run
    (dropout RNG, data order across an epoch boundary, optimizer and scheduler all restored)."""
    tr, lg = _trainer(tmp_path / "full")
    tr.fit()
    lg.close()
    full = _records(tmp_path / "full" / "metrics.jsonl")
    assert full[-1]["epoch"] >= 1  # the run crosses an epoch boundary

    class Crash(Exception):
        pass

    def crash(step, rec):
        if step == 5:
            raise Crash()

    tr, lg = _trainer(tmp_path / "cut", callbacks=[crash])
    with pytest.raises(Crash):
        tr.fit()
    lg.close()
    latest = CheckpointManager(tmp_path / "cut" / "checkpoints").latest()
    assert latest.name == "step_3"
    tr, lg = _trainer(tmp_path / "cut", resume=latest)
    assert tr.step == 3
    tr.fit()
    lg.close()
    resumed = _records(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(full, resumed, strict=True):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"] and a["grad_norm"] == b["grad_norm"], (a, b)
    w_full = torch.load(tmp_path / "full" / "checkpoints" / "step_8" / "training_state.pt", weights_only=False)
    w_cut = torch.load(tmp_path / "cut" / "checkpoints" / "step_8" / "training_state.pt", weights_only=False)
    assert w_full["stream"] == w_cut["stream"]


def test_clipping_bounds_the_applied_gradient_norm(tmp_path):
    tr, lg = _trainer(tmp_path / "clip", max_norm=0.05, dropout=0.0, steps=4, save_step=None)
    applied = []

    def record(opt, args, kwargs):
        applied.append(float(torch.nn.utils.get_total_norm([p.grad for p in tr.params if p.grad is not None])))

    tr.optimizer.register_step_pre_hook(record)
    tr.fit()
    lg.close()
    recs = _records(tmp_path / "clip" / "metrics.jsonl")
    assert all(r["grad_norm"] > 0.05 for r in recs)  # clipping was active
    assert len(applied) == 4 and all(n <= 0.05 * (1 + 1e-4) for n in applied), applied


def test_epochs_bound_training_without_max_steps(tmp_path):
    ds = ToyDataset(n=40)
    s = LoopSettings(per_device_batch_size=4, accumulation_steps=2, max_steps=None, epochs=2, progress=False)
    tr = Trainer(ToyModel(), ds, ToySampler(40, 0), s, info=CPU)
    assert tr.total_steps == 2 * (40 // 4) // 2
    tr.fit()
    assert tr.step == 10 and tr.stream.state_dict() == {"epoch": 1, "position": 40}  # two full passes


def test_non_finite_loss_stops_before_the_update(tmp_path):
    ds = ToyDataset(n=16)
    ds.y[5] = float("nan")
    model = ToyModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = Trainer(model, ds, ToySampler(16, 0), LoopSettings(per_device_batch_size=16, max_steps=1, progress=False),
                 info=CPU)
    with pytest.raises(LatentVLAError, match="not finite"):
        tr.fit()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_too_small_dataset_is_a_clear_error(tmp_path):
    ds = ToyDataset(n=3)
    with pytest.raises(LatentVLAError, match="per_device_batch_size"):
        Trainer(ToyModel(), ds, ToySampler(3, 0), LoopSettings(per_device_batch_size=4, max_steps=1, progress=False),
                info=CPU)


def _torchrun(out, strategy, max_norm, mode="", expect_ok=True):
    from torchrun_helpers import completed, torchrun

    r = torchrun([str(REPO / "tests" / "train_toy.py"), str(out), strategy, "16", "4", "6", str(max_norm), mode],
                 env={"PYTHONPATH": str(REPO)}, timeout=180)
    assert (completed(r) if expect_ok else r.returncode != 0), r.stdout[-3000:] + r.stderr[-3000:]
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_matches_one_process(tmp_path, strategy):
    """Same global batch (16): 1 process x 16 (no accumulation) vs 2 processes x 4 x 2 accumulation
    (so the loss must be divided by the accumulation steps exactly once). Clipping at 0.3 is active
    on most steps, so this also checks that it bounds the global norm."""
    from train_toy import main as toy_main

    torch.set_num_threads(1)
    toy_main([str(tmp_path / "single"), "ddp", "16", "16", "6", "0.3"])
    single = _records(tmp_path / "single" / "metrics.jsonl")
    multi = _records(_torchrun(tmp_path / strategy, strategy, 0.3) / "metrics.jsonl")
    assert sum(r["grad_norm"] > 0.3 for r in single) >= 3
    for a, b in zip(single, multi, strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-4), (a, b)
    w1 = torch.load(tmp_path / "single" / "final_weights.pt")
    w2 = torch.load(tmp_path / strategy / "final_weights.pt")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-6)
    post = json.loads((tmp_path / strategy / "applied_norms.json").read_text())
    assert max(post) <= 0.3 * (1 + 1e-4)
    if strategy == "fsdp":  # resume of a sharded run (gathered optimizer state re-sharded): crash after 5, resume at 4
        _torchrun(tmp_path / "cut", strategy, 0.3, mode="5", expect_ok=False)
        _torchrun(tmp_path / "cut", strategy, 0.3, mode="resume")
        resumed = _records(tmp_path / "cut" / "metrics.jsonl")
        assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
        for a, b in zip(multi, resumed, strict=True):
            assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)


class _FakeBackend:
    """Stands in for the wandb / swanlab packages (not installed in CI): records the calls."""

    def __init__(self):
        self.calls = []

    def init(self, **kw):
        self.calls.append(("init", kw))
        return self

    def log(self, metrics, step=None):
        self.calls.append(("log", step, dict(metrics)))

    def finish(self):
        self.calls.append(("finish",))


def test_use_wandb_means_wandb_and_swanlab_needs_its_env(tmp_path, monkeypatch):
    """Pitfall 17: --use_wandb logs to W&B (project --wandb_project); SwanLab only with ENABLE_SWANLAB=1."""
    from latentvla.train.loggers import build_loggers

    wandb, swanlab = _FakeBackend(), _FakeBackend()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "swanlab", swanlab)
    monkeypatch.delenv("ENABLE_SWANLAB", raising=False)
    lg = build_loggers(tmp_path, resume_step=None, run_name="r", config={"a": 1}, use_wandb=True, wandb_project="proj")
    lg.log(1, {"loss": 0.5})
    lg.close()
    assert wandb.calls[0][0] == "init" and wandb.calls[0][1]["project"] == "proj"
    assert ("log", 1, {"loss": 0.5}) in wandb.calls and swanlab.calls == []
    assert _records(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]
    monkeypatch.setenv("ENABLE_SWANLAB", "1")
    lg = build_loggers(tmp_path, resume_step=1, run_name="r", config={}, use_wandb=False)
    lg.log(2, {"loss": 0.25})
    lg.close()
    assert ("log", 2, {"loss": 0.25}) in swanlab.calls and len(wandb.calls) == 3
    assert [r["step"] for r in _records(tmp_path / "metrics.jsonl")] == [1, 2]


def test_window_mean_logs_means_and_resumes_mid_window(tmp_path):
    """`window_mean` (the latent action models' logging): each logged value is the mean of the steps
    since the last log; a crash and resume inside a window logs what the straight run logs."""
    def run(run_dir, resume=None, crash_at=None, window=True):
        torch.manual_seed(0)
        ds = ToyDataset(n=40)
        s = LoopSettings(per_device_batch_size=4, max_steps=8, learning_rate=0.05, log_step=3 if window else 1,
                         save_step=2, window_mean=window, progress=False)

        def crash(step, rec):
            if crash_at == step:
                raise RuntimeError("crash")

        lg = JSONLLogger(Path(run_dir) / "metrics.jsonl", resume_step=int(resume.name[5:]) if resume else None)
        tr = Trainer(ToyModel(0.2), ds, ToySampler(40, seed=1), s, info=CPU, run_dir=run_dir, logger=lg,
                     callbacks=[crash], resume_from=resume)
        try:
            tr.fit()
        finally:
            lg.close()
        return _records(Path(run_dir) / "metrics.jsonl")

    losses = [r["loss"] for r in run(tmp_path / "steps", window=False)]
    straight = run(tmp_path / "a")
    assert [r["step"] for r in straight] == [3, 6, 8]
    assert [r["loss"] for r in straight] == pytest.approx([np.mean(losses[:3]), np.mean(losses[3:6]),
                                                           np.mean(losses[6:])], rel=1e-12)
    with pytest.raises(RuntimeError):
        run(tmp_path / "b", crash_at=5)  # last checkpoint: step 4, inside the window 4-6
    resumed = run(tmp_path / "b", resume=CheckpointManager(tmp_path / "b" / "checkpoints").latest())
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in resumed] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in straight]


def test_loop_settings_come_from_the_train_config():
    """`latentvla train` copies every loop setting a TrainConfig option of the same name has, so a new
    setting cannot be forgotten; the rest are derived in run.py or used by the latent action models."""
    import dataclasses

    from latentvla.train.configuration_train import TrainConfig

    cfg = TrainConfig(max_steps=7, learning_rate=0.125, keep_checkpoints=5, seed=9)
    s = LoopSettings.from_config(cfg, accumulation_steps=2)
    assert (s.max_steps, s.learning_rate, s.keep_checkpoints, s.seed, s.accumulation_steps) == (7, 0.125, 5, 9, 2)
    others = {f.name for f in dataclasses.fields(LoopSettings)} - {f.name for f in dataclasses.fields(TrainConfig)}
    assert others == {"accumulation_steps", "bf16", "fp16", "find_unused_parameters", "window_mean"}


def test_fp16_loss_scaling_resumes_exactly(tmp_path):
    """`fp16` (the image LAM's --mixed_precision fp16): float16 autocast with a loss scaler whose
    state rides in the training state, so a resumed run takes the straight run's steps."""
    def run(run_dir, resume=None, crash_at=None):
        torch.manual_seed(0)
        s = LoopSettings(per_device_batch_size=4, max_steps=6, learning_rate=0.05, save_step=3, fp16=True,
                         progress=False)

        def crash(step, rec):
            if crash_at == step:
                raise RuntimeError("crash")

        lg = JSONLLogger(Path(run_dir) / "metrics.jsonl", resume_step=int(resume.name[5:]) if resume else None)
        tr = Trainer(ToyModel(), ToyDataset(n=40), ToySampler(40, seed=1), s, info=CPU, run_dir=run_dir, logger=lg,
                     callbacks=[crash], resume_from=resume)
        try:
            tr.fit()
        finally:
            lg.close()
        return tr

    straight = run(tmp_path / "a")
    with pytest.raises(RuntimeError):
        run(tmp_path / "b", crash_at=4)
    latest = CheckpointManager(tmp_path / "b" / "checkpoints").latest()
    assert "scaler" in torch.load(latest / "training_state.pt", weights_only=False)
    resumed = run(tmp_path / "b", resume=latest)
    assert resumed.scaler.get_scale() == straight.scaler.get_scale()
    a, b = (_records(tmp_path / d / "metrics.jsonl") for d in ("a", "b"))
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in a] == [(r["step"], r["loss"], r["grad_norm"]) for r in b]
