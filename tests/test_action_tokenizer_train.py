"""`latentvla lam action-train` on small RLDS datasets written in the real on-disk format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvla.cli import main
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.errors import LatentVLAError
from latentvla.lam.action_tokenizer import ActionChunkTokenizer, ActionTokenizerModel
from latentvla.lam.action_tokenizer_checkpoint import list_checkpoints, load_tokenizer_checkpoint
from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig, ActionTrainConfig
from latentvla.train.lam_run import train_action_tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def structured_action(episode: int, t: int, num_steps: int, rng) -> np.ndarray:
    """Smooth, structured LIBERO-style actions: each episode follows one of 4 closed curves (a
    "task"), so per-step actions lie on a 1-D set that 1 code per step can describe; the gripper
    (raw LIBERO: -1 open, +1 close) switches with the phase."""
    task = episode % 4
    phase = 0.3 * t + 1.7 * episode
    dims = np.arange(6)
    a = np.empty(7, np.float32)
    a[:6] = 0.9 * np.sin(phase * (1 + 0.25 * task) + dims * (0.7 + task))
    a[6] = 1.0 if np.sin(phase) > 0 else -1.0
    return a


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rlds")
    write_synthetic_dataset(root, "libero_goal_no_noops", num_episodes=12, steps=60, image_size=8,
                            action_fn=structured_action)
    write_synthetic_dataset(root, "aloha_lift_pot", num_episodes=2, steps=30, image_size=8)
    return root


def _cfg(root: Path, out: Path, **kw) -> ActionTrainConfig:
    base = dict(data_root_dir=str(root), data_mix="libero_goal", results_dir=str(out), num_steps=40, batch_size=8,
                save_every=20, log_every=10, learning_rate=1e-3, restart_every=20, init_batches=4, eval_batches=2,
                hidden_dim=32, codebook_size=64, device="cpu")
    base.update(kw)
    cfg = ActionTrainConfig(**base)
    cfg.validate()
    return cfg


def test_training_learns_structured_actions(data_root, tmp_path):
    """Acceptance: a few hundred (240) CPU steps lower the reconstruction error >= 5x from the first logged
    value and use >= 25% of the (paper-size) codebook; decode(encode(x)) reconstructs the chunks."""
    out = tmp_path / "run"
    rc = main(["lam", "action-train", "--data_root_dir", str(data_root), "--data_mix", "libero_goal",
               "--results_dir", str(out), "--num_steps", "240", "--batch_size", "16", "--learning_rate", "1e-3",
               "--ema_decay", "0.95", "--save_every", "240", "--log_every", "20", "--restart_every", "20",
               "--device", "cpu", "--eval_batches", "8"])
    assert rc == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(20, 241, 20))
    first, last = log[0], log[-1]
    for key in ("rec_mse", "rec_l1", "rec_mse_robot", "rec_l1_robot", "code_usage", "perplexity", "loss"):
        assert key in last
    report = json.loads((out / "report.json").read_text())
    final = report["final"]
    assert final["rec_mse"] * 5 <= first["rec_mse"], (first["rec_mse"], final["rec_mse"])
    assert last["rec_mse"] * 5 <= first["rec_mse"], (first["rec_mse"], last["rec_mse"])
    assert final["code_usage"] >= 0.25 and last["code_usage"] >= 0.25, (final, last)
    assert final["perplexity"] > 32
    assert report["codebook_size"] == 256 and report["platform"] == "libero"
    assert [s for s, _ in list_checkpoints(out)] == [240]
    # encode -> decode round trip through the saved checkpoint, on chunks from the data pipeline
    from latentvla.data.dataset import ActionChunkDataset

    ds = ActionChunkDataset(str(data_root), "libero_goal", seed=0)
    x = np.stack([ds[i]["actions"] for i in range(0, len(ds), max(1, len(ds) // 64))])
    tok = ActionChunkTokenizer.from_checkpoint(out / "tokenizer_step_240.pt")
    codes = tok.encode(x)
    assert codes.shape == x.shape[:2] and tok.platform_name == "libero"
    err = float(((tok.decode(codes) - torch.from_numpy(x)) ** 2).mean())
    assert err * 5 <= first["rec_mse"] and err < float((torch.from_numpy(x) ** 2).mean()) / 5
    assert set(tok.statistics) == {"libero_goal_no_noops"}


def test_resume_continues_bit_exactly(data_root, tmp_path):
    straight = train_action_tokenizer(_cfg(data_root, tmp_path / "a"))
    train_action_tokenizer(_cfg(data_root, tmp_path / "b", num_steps=20))
    resumed = train_action_tokenizer(_cfg(data_root, tmp_path / "b", resume=True))
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [20, 40]
    a = load_tokenizer_checkpoint(tmp_path / "a" / "tokenizer_step_40.pt")
    b = load_tokenizer_checkpoint(tmp_path / "b" / "tokenizer_step_40.pt")
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert straight["final"] == pytest.approx(resumed["final"], rel=1e-5)
    log = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert log == [10, 20, 30, 40]


def test_errors(data_root, tmp_path):
    out = tmp_path / "r"
    train_action_tokenizer(_cfg(data_root, out, num_steps=10, save_every=10, init_batches=0))
    with pytest.raises(LatentVLAError, match="already holds tokenizer_step_10.pt"):
        train_action_tokenizer(_cfg(data_root, out, num_steps=10))
    # resuming / initialising on a platform the checkpoint was not trained on
    with pytest.raises(LatentVLAError, match="platform 'libero'.*'aloha'"):
        train_action_tokenizer(_cfg(data_root, out, data_mix="aloha_lift_pot", resume=True))
    with pytest.raises(LatentVLAError, match="platform 'libero'.*'aloha'"):
        train_action_tokenizer(_cfg(data_root, tmp_path / "s", data_mix="aloha_lift_pot",
                                    init_checkpoint=str(out / "tokenizer_step_10.pt")))
    with pytest.raises(LatentVLAError, match="unknown|libero_nope"):
        train_action_tokenizer(_cfg(data_root, tmp_path / "t", data_mix="libero_nope"))
    with pytest.raises(LatentVLAError, match="--batch_size"):
        _cfg(data_root, tmp_path / "u", batch_size=0)
    assert main(["lam", "action-train", "--data_root_dir", str(data_root), "--data_mix", "libero_goal"]) == 2


def test_paper_checkpoint_init_and_shim(data_root, tmp_path):
    """The paper's files (3 state dicts, no config) work as --init_checkpoint; action.sh takes its
    values from the environment and passes extra arguments through."""
    torch.manual_seed(0)
    m = ActionTokenizerModel(ActionTokenizerConfig(hidden_dim=32, codebook_size=64, ffn_dim=256))
    paper = tmp_path / "paper_tokenizer_step_10.pt"
    torch.save({"encoder": m.encoder.state_dict(), "vq": m.vq.state_dict(), "decoder": m.decoder.state_dict()}, paper)
    env = {**os.environ, "DATA_ROOT_DIR": str(data_root), "DATA_MIX": "libero_goal",
           "RESULTS_DIR": str(tmp_path / "sh"),
           "NUM_STEPS": "5", "BATCH_SIZE": "4", "SAVE_EVERY": "5", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "data_preprocess/action_based_lam/action.sh"), "--init_checkpoint",
                           str(paper), "--log_every", "5", "--eval_batches", "1", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = ActionChunkTokenizer.from_checkpoint(tmp_path / "sh")
    assert tok.chunk_len == 8 and tok.codebook_size == 64 and tok.platform_name == "libero"


def test_keep_last_prunes_old_checkpoints(data_root, tmp_path):
    report = train_action_tokenizer(_cfg(data_root, tmp_path / "k", num_steps=20, save_every=5, keep_last=2))
    assert [s for s, _ in list_checkpoints(tmp_path / "k")] == [15, 20]
    assert report["checkpoint"].endswith("tokenizer_step_20.pt")
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]  # no temp files left
    written = {p.name for p in (tmp_path / "k").iterdir()}
    assert {"config.json", "dataset_statistics.json", "metrics.jsonl", "report.json"} <= written


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_between_restarts_is_exact(data_root, tmp_path):
    """Resume at step 4, inside a dead-code restart window (every 3): the restart pool, the codebook's
    usage window, the optimizer, RNG and data position come back, so steps 5-10 equal the straight run."""
    kw = dict(save_every=4, log_every=2, restart_every=3, init_batches=2)
    train_action_tokenizer(_cfg(data_root, tmp_path / "a", num_steps=10, **kw))
    train_action_tokenizer(_cfg(data_root, tmp_path / "b", num_steps=4, **kw))
    train_action_tokenizer(_cfg(data_root, tmp_path / "b", num_steps=10, resume=True, **kw))
    straight, resumed = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["step"] for r in resumed] == [2, 4, 6, 8, 10]
    for a, b in zip(straight, resumed, strict=True):
        for k in ("loss", "rec_mse", "code_usage", "perplexity", "restarted_codes", "mask_loss"):
            assert a[k] == b[k], (k, a, b)
    wa = load_tokenizer_checkpoint(tmp_path / "a" / "tokenizer_step_10.pt").model.state_dict()
    wb = load_tokenizer_checkpoint(tmp_path / "b" / "tokenizer_step_10.pt").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # only the newest checkpoint keeps its training state; every tokenizer file loads as a tokenizer
    assert sorted(p.name for p in (tmp_path / "b").glob("training_state_step_*.pt")) == ["training_state_step_10.pt"]


def test_old_checkpoint_resume_is_a_clear_error(data_root, tmp_path):
    out = tmp_path / "old"
    train_action_tokenizer(_cfg(data_root, out, num_steps=2, save_every=2, init_batches=0))
    (out / "training_state_step_2.pt").unlink()  # what an earlier latentvla wrote: the file alone
    assert ActionChunkTokenizer.from_checkpoint(out).codebook_size == 64
    with pytest.raises(LatentVLAError, match="cannot be resumed exactly.*--init_checkpoint"):
        train_action_tokenizer(_cfg(data_root, out, num_steps=4, resume=True))


def test_two_processes_match_one(data_root, tmp_path):
    """torchrun, 2 processes x 4 chunks == 1 process x 8 (the codebook's EMA update and the code
    counts are summed over the ranks). Masking and restarts draw per-rank random numbers, so they
    are off here, as dropout is in the trainer's test."""
    from torchrun_helpers import completed, torchrun

    flags = ["--data_root_dir", str(data_root), "--data_mix", "libero_goal", "--num_steps", "6", "--batch_size", "8",
             "--save_every", "3", "--log_every", "1", "--learning_rate", "1e-3", "--restart_every", "0",
             "--mask_ratio", "0", "--init_batches", "2", "--eval_batches", "1", "--hidden_dim", "32",
             "--codebook_size", "64", "--device", "cpu"]
    assert main(["lam", "action-train", "--results_dir", str(tmp_path / "one"), *flags]) == 0
    r = torchrun(["-m", "latentvla", "lam", "action-train", "--results_dir", str(tmp_path / "two"), *flags],
                 env={"PYTHONPATH": str(REPO)}, timeout=240)
    assert completed(r), r.stdout[-3000:] + r.stderr[-3000:]
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in two] == list(range(1, 7))
    for a, b in zip(one, two, strict=True):
        for k in ("loss", "rec_mse", "commitment", "grad_norm", "code_usage", "perplexity"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-7), (k, a, b)
    wa = load_tokenizer_checkpoint(tmp_path / "one").model.state_dict()
    wb = load_tokenizer_checkpoint(tmp_path / "two").model.state_dict()
    # Adam turns gradients that are zero up to rounding (the attention key bias, whose gradient
    # vanishes) into steps of full size, so those few weights agree to 1e-4 (lr 1e-3), not 1e-6
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-4, msg=k)
