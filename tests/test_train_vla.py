"""`latentvla train` end to end on CPU with the tiny Qwen3-VL and datasets written by the tests:
each variant trains with the paper's flags (defaults otherwise), checkpoints load into
`VLAPolicy`, resume continues exactly, and 2-process torchrun DDP equals 1 process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvla.cli import main
from latentvla.config import parse_config
from latentvla.errors import LatentVLAError
from latentvla.train.configuration_train import TrainConfig
from latentvla.train.run import train

REPO = Path(__file__).resolve().parents[1]


def paper_flags(vlm, data, runs, vla_id, **over) -> list[str]:
    """The paper's README flags (paths filled in, sizes shrunk for CPU)."""
    flags = {
        "seed": 42, "run_root_dir": runs, "save_checkpoint": True, "vla_id": vla_id, "vlm_path": vlm,
        "vlm_model_id": "qwen3vl_tiny", "default_image_size": 64, "data_root_dir": data, "data_mix": '["libero_goal"]',
        "shuffle_buffer_size": 256000, "image_aug": True, "window_size": 8, "use_wrist_image": True,
        "use_proprio": True,
        "use_pro_version": False, "num_images_in_input": 2, "use_latent": vla_id != "baseline", "type": "image",
        "epochs": 1, "max_steps": 2, "global_batch_size": 2, "per_device_batch_size": 1, "learning_rate": 1e-3,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "lr_scheduler_type": "linear-warmup+cosine-decay",
        "warmup_ratio": 0.1, "save_step": 2, "token_loss_weight": 1.0, "use_val": False, "wandb_project": "test",
        "use_wandb": False, "from_pretrained": False,
        # ours: small LoRA, no worker processes, quiet
        "lora_rank": 4, "num_workers": 0, "progress": False,
    }
    flags.update(over)
    out = []
    for k, v in flags.items():
        if v is not None:
            out += [f"--{k}", str(v)]
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _run_dir(runs: Path) -> Path:
    (d,) = [p for p in runs.iterdir() if p.is_dir()]
    return d


@pytest.mark.parametrize("vla_id", ["la_align", "la_direct", "la_cond", "la_tok"])
def test_variant_trains_with_paper_flags(tmp_path, tiny_vlm_dir, vla_data_root, tokenizer_ckpt, vla_id, capsys):
    over = {"action_tokenizer_ckpt": tokenizer_ckpt} if vla_id == "la_tok" else {}
    if vla_id == "la_cond":  # also: held-out validation and the merged export
        over.update(use_val=True, val_step=1, val_batches=2, merge_lora=True)
    runs = tmp_path / "runs"
    assert main(["train", *paper_flags(tiny_vlm_dir, vla_data_root, runs, vla_id, **over)]) == 0
    out = capsys.readouterr().out
    read = vla_data_root / ("libero_goal_no_noops" if vla_id == "la_tok" else "libero_goal_no_noops_latent") / "1.0.0"
    assert f"libero_goal_no_noops ({read})" in out, out  # the directory actually read
    run = _run_dir(runs)
    recs = _records(run)
    assert [r["step"] for r in recs] == [1, 2]
    for key in ("loss", "l1", "lr", "grad_norm", "samples_per_s", "data_wait_fraction"):
        assert all(math.isfinite(r[key]) for r in recs), key
    if vla_id != "la_align":
        assert "code_acc" in recs[0]
    cfg = (run / "config.yaml").read_text()
    assert f"vla_id: {vla_id}" in cfg and "accumulation_steps: 2" in cfg
    assert json.loads((run / "dataset_statistics.json").read_text()).keys() == {"libero_goal_no_noops"}
    ckpt = run / "checkpoints" / "step_2"
    assert (ckpt / "COMPLETE").is_file() and (run / "checkpoints" / "latest").read_text().strip() == "step_2"
    if vla_id == "la_cond":
        assert "val/l1" in recs[0] and (run / "merged" / "model.safetensors").is_file()
        derived = run / "config.yaml"
        assert "val_transitions: " in derived.read_text()
    from latentvla.vla.policy import VLAPolicy

    policy = VLAPolicy.from_pretrained(ckpt, device="cpu")
    assert policy.image_resample == "bicubic" and policy.center_crop  # how training made images travels along
    chunk = policy.predict_action([np.zeros((64, 64, 3), np.uint8)] * 2, "put the bowl on the plate",
                                  np.zeros(8, np.float32))
    assert chunk.shape == (8, 7) and np.isfinite(chunk).all()
    if vla_id == "la_tok":  # the run records its tokenizer, so `--decode_tokens` finds it with no extra flag
        saved = json.loads((ckpt / "config.json").read_text())["train"]["action_tokenizer_ckpt"]
        assert saved == str(Path(tokenizer_ckpt).resolve())
        decoded = VLAPolicy.from_pretrained(ckpt, device="cpu", decode_tokens=True)
        assert decoded.predict_action([np.zeros((64, 64, 3), np.uint8)] * 2, "put the bowl on the plate",
                                      np.zeros(8, np.float32)).shape == (8, 7)


def test_latent_codebook_size_from_the_annotation(tmp_path, tiny_vlm_dir, vla_data_root):
    """`latent_annotation.json` (written by `lam annotate`) sets K when --latent_codebook_size is absent."""
    import shutil

    from latentvla.train.preflight import preflight
    from latentvla.train.run import build_vla_config

    data = tmp_path / "data"
    shutil.copytree(vla_data_root, data)
    (labelled,) = (data / "libero_goal_no_noops_latent").iterdir()
    (labelled / "latent_annotation.json").write_text(json.dumps({"codebook_size": 32, "num_codes": 4}))

    def pre_and_vla(**over):
        cfg = parse_config(TrainConfig, paper_flags(tiny_vlm_dir, data, tmp_path / "runs", "la_direct", **over))
        pre = preflight(cfg)
        return pre, build_vla_config(cfg, pre)

    pre, vcfg = pre_and_vla()
    assert vcfg.latent_codebook_size == 32 and pre.dataset_dirs == [labelled]
    assert pre_and_vla(latent_codebook_size=64)[1].latent_codebook_size == 64
    with pytest.raises(LatentVLAError, match="--latent_codebook_size 16 is smaller than the codebook size 32"):
        pre_and_vla(latent_codebook_size=16)
    (labelled / "latent_annotation.json").write_text(json.dumps({"num_codes": 4}))  # older annotation: the default
    assert pre_and_vla()[1].latent_codebook_size == 16


def test_baseline_via_torchrun_shim(tmp_path, tiny_vlm_dir, vla_data_root):
    """The paper's command line: torchrun --nnodes=1 --nproc_per_node=1 exp/train_vla.py ..."""
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                        "--nproc_per_node=1", str(REPO / "exp" / "train_vla.py"),
                        *paper_flags(tiny_vlm_dir, vla_data_root, runs, "baseline")],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = _run_dir(runs)
    assert [x["step"] for x in _records(run)] == [1, 2]
    # Re-running into a run dir with checkpoints is refused unless --resume True.
    assert main(["train", *paper_flags(tiny_vlm_dir, vla_data_root, runs, "baseline")]) == 2


def test_resume_continues_exactly(tmp_path, tiny_vlm_dir, vla_data_root, capsys):
    def cfg(runs, **over):
        over = {"max_steps": 4, "lr_scheduler_type": "constant", "vla_id": "baseline", **over}
        vla_id = over.pop("vla_id")
        return parse_config(TrainConfig, paper_flags(tiny_vlm_dir, vla_data_root, runs, vla_id, **over))

    train(cfg(tmp_path / "full"))
    full = _records(_run_dir(tmp_path / "full"))

    class Crash(Exception):
        pass

    def crash(step, rec):
        if step == 3:
            raise Crash()

    with pytest.raises(Crash):
        train(cfg(tmp_path / "cut"), callbacks=[crash])
    train(cfg(tmp_path / "cut", resume=True))
    resumed = _records(_run_dir(tmp_path / "cut"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    # Weights-only warm start from that checkpoint (the run dir resolves to its newest checkpoint).
    ckpt = _run_dir(tmp_path / "cut") / "checkpoints" / "step_4"
    capsys.readouterr()
    train(cfg(tmp_path / "warm", from_pretrained=True, pretrained_checkpoint=_run_dir(tmp_path / "cut"), max_steps=1))
    out = capsys.readouterr().out
    assert f"warm-started from {ckpt}" in out and "from scratch" not in out
    with pytest.raises(LatentVLAError, match="do not match"):
        train(cfg(tmp_path / "bad", vla_id="la_direct", from_pretrained=True, pretrained_checkpoint=ckpt, max_steps=1))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_matches_one_process(tmp_path, tiny_vlm_dir, vla_data_root, strategy):
    """Global batch 2: 1 process x 1 x 2 accumulation vs torchrun 2 processes x 1 (DDP / FSDP2)."""
    flags = paper_flags(tiny_vlm_dir, vla_data_root, tmp_path / "one", "baseline", max_steps=3, save_step=3)
    assert main(["train", *flags]) == 0
    from torchrun_helpers import completed, torchrun

    r = torchrun([str(REPO / "exp" / "train_vla.py"),
                  *paper_flags(tiny_vlm_dir, vla_data_root, tmp_path / "two", "baseline", max_steps=3, save_step=3,
                               strategy=strategy)], timeout=300)
    assert completed(r), r.stderr[-3000:]
    one, two = _records(_run_dir(tmp_path / "one")), _records(_run_dir(tmp_path / "two"))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a, b)
    # The sharded run's checkpoint holds full weights that load into a policy.
    from latentvla.vla.policy import VLAPolicy

    assert VLAPolicy.from_pretrained(_run_dir(tmp_path / "two") / "checkpoints" / "step_3", device="cpu").chunk_len == 8


def test_validation_uses_held_out_episodes(tmp_path, tiny_vlm_dir, vla_data_root):
    from latentvla.data.dataset import VLADataset
    from latentvla.data.sampler import SampleIndex
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.train.holdout import EpisodeSubset, has_val_split, split_episodes

    base = VLADataset(vla_data_root, "libero_goal", image_size=32, image_aug=False, progress=False)
    assert not has_val_split(base)
    train_eps, val_eps = split_episodes(base, 0.3, seed=42)
    assert len(val_eps[0]) == 1 and set(train_eps[0]) | set(val_eps[0]) == {0, 1, 2}
    tr, va = EpisodeSubset(base, train_eps), EpisodeSubset(base, val_eps)
    assert len(tr) + len(va) == len(base) and sum(tr.dataset_lengths) == len(tr)
    assert {va[i]["episode"] for i in range(len(va))} == set(val_eps[0].tolist())
    assert {tr[SampleIndex(i, 1)]["episode"] for i in range(0, len(tr), 3)} <= set(train_eps[0].tolist())
    # A dataset with a 'val' split validates on it.
    root = tmp_path / "data"
    write_synthetic_dataset(root, "libero_goal_no_noops", num_episodes=2, steps=9, image_size=32, val_episodes=1)
    runs = tmp_path / "runs"
    assert main(["train", *paper_flags(tiny_vlm_dir, root, runs, "baseline", use_val=True, val_step=2)]) == 0
    run = _run_dir(runs)
    recs = _records(run)
    assert "val/l1" not in recs[0] and math.isfinite(recs[1]["val/l1"])
    assert "val_transitions: 9" in (run / "config.yaml").read_text()


def test_pretrained_checkpoint_is_read_only_with_from_pretrained(tmp_path, tiny_vlm_dir, vla_data_root, capsys):
    """The paper's scripts pass `--from_pretrained False --pretrained_checkpoint /placeholder/...`: the path is
    ignored (a note says so) and nothing is loaded; only --from_pretrained True reads it."""
    from safetensors.torch import save_file

    def flags(runs, **over):
        return paper_flags(tiny_vlm_dir, vla_data_root, runs, "baseline", max_steps=1, save_checkpoint=False, **over)

    placeholder = "/placeholder/path/that/does/not/exist"
    assert main(["train", *flags(tmp_path / "a", pretrained_checkpoint=placeholder)]) == 0
    out = capsys.readouterr().out
    assert f"--pretrained_checkpoint {placeholder} ignored" in out and "from scratch" in out
    assert [r["step"] for r in _records(_run_dir(tmp_path / "a"))] == [1]
    # A checkpoint-shaped dir whose weights fit no model: loading it fails, so a clean run proves it was not read.
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, str(bogus / "model.safetensors"))
    train(parse_config(TrainConfig, flags(tmp_path / "b", pretrained_checkpoint=bogus, from_pretrained=False)))
    out = capsys.readouterr().out
    assert "from scratch" in out and "warm-started" not in out
    with pytest.raises(LatentVLAError, match="do not match"):
        train(parse_config(TrainConfig, flags(tmp_path / "c", pretrained_checkpoint=bogus, from_pretrained=True)))
