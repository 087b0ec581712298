"""`latentvla lam image-train`: learning on action-driven frames, resume, size/stage checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvla.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).parent))

DIRS = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)

def _action(e, t, T, rng):
    """Piecewise-constant moves in 4 directions: the frame change of a pair depends on the action."""
    a = np.zeros(7, np.float32)
    a[:2] = DIRS[(e + t // 3) % 4] * 1.5
    a[6] = -1.0
    return a


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from latentvla.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("lamtrain")
    write_synthetic_dataset(root / "data", name="libero_goal_no_noops", num_episodes=8, steps=24, image_size=56,
                            action_fn=_action)
    # one head: UniVLA-layout (original DINOv2) weights imply 64-wide heads
    assert cli_main(["tiny-dino", str(root / "dino"), "--num_layers", "1", "--num_heads", "1"]) == 0
    return root


def _argv(root: Path, run_id: str, *extra: str) -> list[str]:
    return ["lam", "image-train", "--data_root_dir", str(root / "data"), "--data_mix", "libero_goal",
            "--dino_path", str(root / "dino"), "--results_dir", str(root / "runs"), "--run_id", run_id,
            "--batch_size", "8", "--model_dim", "32", "--enc_blocks", "1", "--dec_blocks", "1", "--num_heads", "2",
            "--latent_dim", "16", "--codebook_size", "8", "--pair_offset", "2", "--image_size", "56",
            "--learning_rate", "1e-3", "--code_restart_every", "25", *extra]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_lam_learns_and_uses_several_codes(setup):
    assert cli_main(_argv(setup, "learn", "--max_steps", "200", "--log_every", "20", "--save_every", "200")) == 0
    run = setup / "runs" / "learn"
    m = _metrics(run)
    assert [r["step"] for r in m] == list(range(20, 201, 20))
    assert m[-1]["recon_loss"] < 0.5 * m[0]["recon_loss"]
    assert all(r["codes_used"] > 1 and r["perplexity"] > 1.0 for r in m)
    assert "action_loss" in m[-1] and "commit_loss_action" in m[-1]
    ckpt = run / "checkpoints" / "step_200"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_200"
    assert {p.name for p in ckpt.iterdir()} == {"config.json", "model.safetensors", "training_state.pt", "COMPLETE"}


def test_resume_continues_exactly(setup):
    common = ("--log_every", "1", "--save_every", "3", "--code_restart_every", "2")
    assert cli_main(_argv(setup, "straight", "--max_steps", "6", *common)) == 0
    assert cli_main(_argv(setup, "resumed", "--max_steps", "3", *common)) == 0
    assert cli_main(_argv(setup, "resumed", "--max_steps", "6", *common)) == 0
    from safetensors.torch import load_file

    a = load_file(str(setup / "runs" / "straight" / "checkpoints" / "step_6" / "model.safetensors"))
    b = load_file(str(setup / "runs" / "resumed" / "checkpoints" / "step_6" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert [r["step"] for r in _metrics(setup / "runs" / "resumed")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _metrics(setup / "runs" / "resumed")] == pytest.approx(
        [r["loss"] for r in _metrics(setup / "runs" / "straight")], rel=1e-5)


def test_different_size_and_stage_errors(setup, capsys):
    assert cli_main(_argv(setup, "sized", "--max_steps", "1")) == 0
    # resuming a run with other sizes
    assert cli_main(_argv(setup, "sized", "--max_steps", "2", "--latent_dim", "8")) == 2
    assert "different size" in capsys.readouterr().err
    # starting from a checkpoint of another size
    ckpt = setup / "runs" / "sized" / "checkpoints" / "step_1"
    assert cli_main(_argv(setup, "other", "--max_steps", "1", "--lam_path", str(ckpt), "--model_dim", "64")) == 2
    err = capsys.readouterr().err
    assert "different size" in err and "checkpoint (32,) vs model (64,)" in err
    assert cli_main(_argv(setup, "other", "--max_steps", "1", "--stage_one_ckpt", str(ckpt))) == 2
    assert "expected stage 1" in capsys.readouterr().err
    assert not (setup / "runs" / "other" / "checkpoints").exists()


def _write_tiny_t5(out: Path) -> Path:
    """A tiny random T5 encoder + word-level tokenizer, loaded through the same path as t5-base."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["<pad>", "</s>", "<unk>"] + "pick up the black bowl and place it on plate open top drawer".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(config).save_pretrained(out)
    return out


def test_stage_one_then_stage_two(setup, capsys):
    from safetensors.torch import load_file

    t5 = _write_tiny_t5(setup / "t5")
    assert cli_main(_argv(setup, "s1", "--stage", "2", "--max_steps", "1", "--t5_path", str(t5), "--stage", "1",
                          "--log_every", "1")) == 0
    s1 = setup / "runs" / "s1" / "checkpoints" / "step_1"
    w1 = load_file(str(s1 / "model.safetensors"))
    assert "lang_proj.weight" in w1 and "vq_action.codebook.weight" not in w1
    assert not any(k.startswith("text_encoder.") for k in w1)  # frozen T5 is not copied
    assert cli_main(_argv(setup, "s2", "--max_steps", "2", "--stage_one_ckpt", str(s1), "--log_every", "1")) == 0
    assert "carried action_latent, vq.codebook.weight" in capsys.readouterr().out
    w2 = load_file(str(setup / "runs" / "s2" / "checkpoints" / "step_2" / "model.safetensors"))
    torch.testing.assert_close(w2["vq.codebook.weight"], w1["vq.codebook.weight"])  # carried, frozen in stage 2
    assert not torch.equal(w2["action_latent"], w1["action_latent"])  # carried, then trained
    assert cli_main(_argv(setup, "s3", "--max_steps", "1", "--stage", "1")) == 2
    assert "needs --t5_path" in capsys.readouterr().err


def test_post_train_univla_stage_two_checkpoint(setup, capsys):
    """The paper's workflow: --lam_path UniVLA .ckpt (DINO inside, no action head), no --dino_path."""
    from image_lam_helpers import hf_to_original_dino, univla_lightning_ckpt
    from safetensors.torch import load_file

    from latentvla.lam.configuration_image_lam import ImageLAMConfig
    from latentvla.lam.dino import load_dino
    from latentvla.lam.image_lam import ImageLatentActionModel

    torch.manual_seed(1)
    src = ImageLatentActionModel(ImageLAMConfig(model_dim=32, enc_blocks=1, dec_blocks=1, num_heads=2, latent_dim=16,
                                                codebook_size=8, dino_dim=32, num_patches=16, image_size=56,
                                                pair_offset=2), dino=load_dino(setup / "dino"))
    ckpt = univla_lightning_ckpt(src, setup / "lam-stage-2.ckpt", layers=1)
    argv = [a for a in _argv(setup, "post", "--max_steps", "2", "--lam_path", str(ckpt)) if a != str(setup / "dino")]
    argv.remove("--dino_path")
    assert cli_main(argv) == 0
    assert "action-regression head starts from random initialisation" in capsys.readouterr().out
    out = load_file(str(setup / "runs" / "post" / "checkpoints" / "step_2" / "model.safetensors"))
    torch.testing.assert_close(out["vq.codebook.weight"], src.vq.codebook.weight)  # frozen in stage 2
    dino = {k[len("dino_encoder.model."):]: v for k, v in out.items() if k.startswith("dino_encoder.model.")}
    ref = {k[len("model."):]: v for k, v in src.dino_encoder.state_dict().items()}
    for k, v in hf_to_original_dino(dino, 1).items():
        torch.testing.assert_close(v, hf_to_original_dino(ref, 1)[k], msg=k)


def test_resume_between_restarts_is_exact(setup):
    """Resume at step 4, after the restart at 3: the usage since that restart, the action-subset
    generator, optimizer, RNG and data position come back, so steps 5-6 equal the straight run."""
    common = ("--log_every", "2", "--save_every", "4", "--code_restart_every", "3")
    assert cli_main(_argv(setup, "gap-straight", "--max_steps", "6", *common)) == 0
    assert cli_main(_argv(setup, "gap-resumed", "--max_steps", "4", *common)) == 0
    assert cli_main(_argv(setup, "gap-resumed", "--max_steps", "6", *common)) == 0
    a, b = _metrics(setup / "runs" / "gap-straight"), _metrics(setup / "runs" / "gap-resumed")
    assert [r["step"] for r in b] == [2, 4, 6]
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "recon_loss", "action_loss", "codes_used", "perplexity", "codes_restarted", "grad_norm"):
            assert ra[k] == rb[k], (k, ra, rb)
    from safetensors.torch import load_file

    wa = load_file(str(setup / "runs" / "gap-straight" / "checkpoints" / "step_6" / "model.safetensors"))
    wb = load_file(str(setup / "runs" / "gap-resumed" / "checkpoints" / "step_6" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_old_run_directory(setup, capsys):
    """A run whose checkpoints an earlier latentvla wrote (no COMPLETE marker) is not silently started
    over; its checkpoint still loads for `lam annotate`."""
    from latentvla.lam.image_lam_checkpoint import load_image_lam

    assert cli_main(_argv(setup, "old", "--max_steps", "1")) == 0
    ckpt = setup / "runs" / "old" / "checkpoints" / "step_1"
    (ckpt / "COMPLETE").unlink()
    model, meta = load_image_lam(setup / "runs" / "old")
    assert meta["step"] == 1 and model.config.codebook_size == 8
    assert cli_main(_argv(setup, "old", "--max_steps", "2")) == 2
    assert "earlier latentvla" in capsys.readouterr().err


def test_two_processes_match_one(setup):
    """torchrun, 2 processes x 4 pairs == 1 process x 8. Every pair gets the action loss
    (--action_loss_fraction 1: the random subset is per rank) and no codes restart (restarts seed
    codes from rank 0's encoder outputs)."""
    from safetensors.torch import load_file
    from torchrun_helpers import completed, torchrun

    common = ("--max_steps", "4", "--log_every", "1", "--save_every", "4", "--code_restart_every", "0",
              "--action_loss_fraction", "1.0", "--device", "cpu")
    assert cli_main(_argv(setup, "one", *common)) == 0
    argv = _argv(setup, "two", *common)
    argv[argv.index("--batch_size") + 1] = "4"
    r = torchrun(["-m", "latentvla", *argv], env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                 timeout=240)
    assert completed(r), r.stdout[-3000:] + r.stderr[-3000:]
    one, two = _metrics(setup / "runs" / "one"), _metrics(setup / "runs" / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        for k in ("loss", "recon_loss", "action_loss", "grad_norm", "codes_used", "perplexity"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-7), (k, a, b)
    wa = load_file(str(setup / "runs" / "one" / "checkpoints" / "step_4" / "model.safetensors"))
    wb = load_file(str(setup / "runs" / "two" / "checkpoints" / "step_4" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
