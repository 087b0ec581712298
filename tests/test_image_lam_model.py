"""Image LAM: tiny-dino writer, DINO loading (HF dir / original layout), model, UniVLA checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from image_lam_helpers import TINY, hf_to_original_dino, univla_lightning_ckpt

from latentvla.cli import main as cli_main
from latentvla.errors import LatentVLAError


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dino") / "tiny_dino"
    # one head: the original .pth layout does not store heads; DINOv2 uses 64-wide heads (32 → 1)
    assert cli_main(["tiny-dino", str(out), "--num_layers", "1", "--num_heads", "1"]) == 0
    return out


def tiny_model(dino_dir: Path, **over):
    from latentvla.lam.configuration_image_lam import ImageLAMConfig
    from latentvla.lam.dino import load_dino
    from latentvla.lam.image_lam import ImageLatentActionModel

    torch.manual_seed(0)
    return ImageLatentActionModel(ImageLAMConfig(**{**TINY, **over}), dino=load_dino(dino_dir)).eval()


def test_tiny_dino_loads_with_transformers(dino_dir):
    from transformers import Dinov2WithRegistersModel

    model = Dinov2WithRegistersModel.from_pretrained(dino_dir)
    assert model.config.num_register_tokens == 4 and model.config.hidden_size == 32
    assert json.loads((dino_dir / "preprocessor_config.json").read_text())["crop_size"]["height"] == 56


def test_tiny_dino_rejects_bad_config(tmp_path, capsys):
    assert cli_main(["tiny-dino", str(tmp_path / "x"), "--hidden_size", "30", "--num_heads", "4"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert cli_main(["tiny-dino", str(tmp_path / "y"), "--image_size", "50"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_original_layout_dino_matches_hf(dino_dir, tmp_path):
    from latentvla.lam.dino import load_dino

    hf = load_dino(dino_dir)
    sd = {k[len("model."):]: v for k, v in hf.state_dict().items()}
    torch.save(hf_to_original_dino(sd, 1), tmp_path / "dinov2_reg.pth")
    orig = load_dino(tmp_path / "dinov2_reg.pth")
    x = torch.rand(2, 3, 56, 56)
    feats = hf(x)
    assert feats.shape == (2, 16, 32)  # CLS and 4 registers dropped
    torch.testing.assert_close(orig(x), feats)
    with pytest.raises(LatentVLAError, match="model_type"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "config.json").write_text('{"model_type": "vit"}')
        load_dino(tmp_path / "bad")


def test_forward_shapes_and_causal_encoder(dino_dir):
    model = tiny_model(dino_dir)
    frames = torch.rand(3, 2, 3, 56, 56)
    out = model(frames)
    assert out["recon"].shape == out["target"].shape == (3, 16, 32)
    assert out["indices"].shape == (3, 4) and out["z_q"].shape == (3, 4, 16)
    feats = model.dino_features(frames.flatten(0, 1)).view(3, 2, 16, 32)
    idx, z = model.encode_latent_actions(feats)
    assert idx.dtype == torch.int64 and z.dtype == torch.float32 and z.shape == (3, 4, 16)
    torch.testing.assert_close(z, model.vq_action.codebook.weight[idx])
    # frame t's encoder outputs must not depend on frame t+k (causal temporal attention)
    enc_in = torch.randn(1, 2, 24, 32)
    a = model.encoder(enc_in)[:, 0]
    enc_in[:, 1] += 1.0
    torch.testing.assert_close(model.encoder(enc_in)[:, 0], a)


def test_univla_checkpoint_round_trip(dino_dir, tmp_path):
    from latentvla.lam.image_lam_checkpoint import load_image_lam

    src = tiny_model(dino_dir)
    ckpt = univla_lightning_ckpt(src, tmp_path / "lam-stage-2.ckpt", layers=1)
    model, meta = load_image_lam(ckpt, num_heads=2, pair_offset=4)
    assert model.config.stage == 2 and model.config.model_dim == 32 and model.config.codebook_size == 8
    assert model.config.action_dim == 0  # the public stage-2 file has no action head
    x = torch.rand(2, 2, 3, 56, 56)
    feats = src.dino_features(x.flatten(0, 1)).view(2, 2, 16, 32)
    torch.testing.assert_close(model.dino_features(x.flatten(0, 1)).view(2, 2, 16, 32), feats)
    for a, b in zip(model.encode_latent_actions(feats), src.encode_latent_actions(feats), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model(x)["recon"], src(x)["recon"])


def test_univla_checkpoint_key_errors(dino_dir, tmp_path):
    from latentvla.lam.image_lam_checkpoint import load_image_lam

    src = tiny_model(dino_dir)
    path = univla_lightning_ckpt(src, tmp_path / "ok.ckpt", layers=1)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["lam.patch_up.weight"]
    ckpt["state_dict"]["lam.extra_head.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "broken.ckpt")
    with pytest.raises(LatentVLAError, match=r"missing key.*patch_up.weight.*unexpected.*extra_head.*--non_strict"):
        load_image_lam(tmp_path / "broken.ckpt", num_heads=2)
    model, _ = load_image_lam(tmp_path / "broken.ckpt", num_heads=2, strict=False)
    assert model.config.model_dim == 32
    with pytest.raises(LatentVLAError, match="not divisible by num_heads"):
        load_image_lam(path, num_heads=5)


def test_checkpoint_of_different_size_is_a_clear_error(dino_dir):
    from latentvla.lam.univla_checkpoint import load_lam_weights

    small = tiny_model(dino_dir, latent_dim=8)
    big = tiny_model(dino_dir)
    with pytest.raises(LatentVLAError, match=r"different size.*to_codebook_uncontrol.weight: checkpoint \(8, 32\) vs "
                                             r"model \(16, 32\)"):
        load_lam_weights(big, small.lam_state_dict(), source="x")


def test_our_checkpoint_round_trip(dino_dir, tmp_path):
    from latentvla.lam.image_lam_checkpoint import load_image_lam, save_lam_checkpoint

    src = tiny_model(dino_dir)
    save_lam_checkpoint(tmp_path / "ck", src, step=7)
    model, meta = load_image_lam(tmp_path / "ck")
    assert meta["step"] == 7 and model.config == src.config and model.config.image_resample == "bicubic"
    x = torch.rand(2, 2, 3, 56, 56)
    torch.testing.assert_close(model(x)["recon"], src(x)["recon"])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers
    # a checkpoint from before image_resample existed: its frames were Lanczos-resized, and annotation must match
    import json

    from latentvla.lam.latent_labeler import LatentLabeler

    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    del cfg["lam"]["image_resample"]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    legacy, _ = load_image_lam(tmp_path / "ck")
    assert legacy.config.image_resample == "lanczos"
    assert LatentLabeler(legacy, pair_offset=2, device="cpu", decode_threads=1).image_resample == "lanczos"


def test_univla_stage_one_checkpoint_names(dino_dir, tmp_path):
    """Stage-1 files name the task-irrelevant branch to_codebook / action_up and carry T5 + lang_proj."""
    from latentvla.lam.image_lam_checkpoint import load_image_lam, read_lam_tensors
    from latentvla.lam.univla_checkpoint import stage_one_transfer

    src = tiny_model(dino_dir, stage=1, text_dim=24)
    sd = {}
    for k, v in src.lam_state_dict().items():
        k = k.replace("to_codebook_uncontrol.", "to_codebook.").replace("action_up_uncontrol.", "action_up.")
        sd[f"lam.{k}"] = v
    sd["lam.text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(4, 4)
    torch.save({"state_dict": sd}, tmp_path / "stage1.ckpt")
    model, _ = load_image_lam(tmp_path / "stage1.ckpt", dino_path=dino_dir, num_heads=2, with_text_encoder=False)
    assert model.config.stage == 1 and model.config.text_dim == 24
    torch.testing.assert_close(model.to_codebook_uncontrol.weight, src.to_codebook_uncontrol.weight)
    tensors, stage = read_lam_tensors(tmp_path / "stage1.ckpt")
    assert stage == 1 and sorted(stage_one_transfer(tensors)) == ["action_latent", "vq.codebook.weight"]


def test_action_head_of_another_robot_starts_fresh(dino_dir, capsys):
    from latentvla.lam.univla_checkpoint import load_lam_weights

    src = tiny_model(dino_dir, action_dim=14)  # e.g. a RoboTwin head
    dst = tiny_model(dino_dir)
    report = load_lam_weights(dst, src.lam_state_dict(), source="x")
    assert report["fresh"] == ["action_decoder.2.bias", "action_decoder.2.weight"]
    assert "action-regression head starts from random initialisation" in capsys.readouterr().out
    torch.testing.assert_close(dst.action_decoder[0].weight, src.action_decoder[0].weight)
    torch.testing.assert_close(dst.to_codebook.weight, src.to_codebook.weight)


def test_lightning_hyper_parameters_size_the_model(dino_dir, tmp_path, capsys):
    """A stage-2 .ckpt trained at k != 32: heads, k and D come from its hyper_parameters; flags override."""
    from image_lam_helpers import univla_hyper_parameters

    from latentvla.lam.image_lam_checkpoint import load_image_lam, read_lam_checkpoint
    from latentvla.lam.univla_checkpoint import check_train_flags

    src = tiny_model(dino_dir, pair_offset=5, action_dim=7)  # action_decoder.2: 35 outputs, not a multiple of 32
    ckpt = univla_lightning_ckpt(src, tmp_path / "k5.ckpt", layers=1, with_action_decoder=True,
                                 hyper_parameters=univla_hyper_parameters(src.config))
    model, meta = load_image_lam(ckpt)
    assert (model.config.num_heads, model.config.pair_offset, model.config.action_dim) == (2, 5, 7)
    torch.testing.assert_close(model.action_decoder[2].weight, src.action_decoder[2].weight)
    assert meta["settings"]["pair_offset"] == "5 (hyper_parameters.goal_image_step)"
    assert meta["settings"]["num_heads"] == "2 (hyper_parameters.lam_num_heads)"
    out = capsys.readouterr().out
    assert "LAM settings: num_heads 2 (hyper_parameters.lam_num_heads)" in out and "action_dim 7" in out
    x = torch.rand(2, 2, 3, 56, 56)
    torch.testing.assert_close(model(x)["recon"], src(x)["recon"])

    # explicit values win over the stored ones, and say so
    model, meta = load_image_lam(ckpt, num_heads=1, pair_offset=7)
    assert (model.config.num_heads, model.config.pair_offset, model.config.action_dim) == (1, 7, 5)
    assert meta["settings"]["num_heads"] == "1 (--num_heads)"
    assert meta["settings"]["pair_offset"] == "7 (--lam_pair_offset)"

    # the data module's goal_image_step is used when the model's hyper_parameters lack it
    univla_lightning_ckpt(src, tmp_path / "dm.ckpt", layers=1, with_action_decoder=True,
                          datamodule_hyper_parameters={"data_mix": ["libero_goal"], "goal_image_step": 5})
    model, meta = load_image_lam(tmp_path / "dm.ckpt", num_heads=2)
    assert model.config.action_dim == 7
    assert meta["settings"]["pair_offset"] == "5 (datamodule_hyper_parameters.goal_image_step)"

    # nothing stored and 35 outputs: strict loading still works, without the (unused) action head
    univla_lightning_ckpt(src, tmp_path / "bare.ckpt", layers=1, with_action_decoder=True)
    capsys.readouterr()
    model, meta = load_image_lam(tmp_path / "bare.ckpt", num_heads=2)
    assert model.config.action_dim == 0 and not hasattr(model, "action_decoder")
    out = capsys.readouterr().out
    assert "action_decoder.2 has 35 outputs" in out and "--lam_pair_offset" in out
    for a, b in zip(model.encode_latent_actions(src.dino_features(x.flatten(0, 1)).view(2, 2, 16, 32)),
                    src.encode_latent_actions(src.dino_features(x.flatten(0, 1)).view(2, 2, 16, 32)), strict=True):
        torch.testing.assert_close(a, b)

    # a stored size that contradicts the weights is reported; the weights decide
    univla_lightning_ckpt(src, tmp_path / "odd.ckpt", layers=1, hyper_parameters=univla_hyper_parameters(
        src.config, lam_model_dim=64, lam_num_heads="two"))
    model, _ = load_image_lam(tmp_path / "odd.ckpt", num_heads=2)
    out = capsys.readouterr().out
    assert model.config.model_dim == 32 and model.config.num_heads == 2
    assert "lam_model_dim = 64 disagrees with the weights (model_dim 32)" in out
    assert "ignoring hyper_parameters.lam_num_heads" in out

    # `lam image-train --lam_path`: the stored head count must match --num_heads
    _, _, stored = read_lam_checkpoint(ckpt)
    with pytest.raises(LatentVLAError, match=r"trained with 2 attention heads "
                                             r"\(hyper_parameters.lam_num_heads\).*--num_heads 2"):
        check_train_flags(stored, num_heads=12, pair_offset=32, source="--lam_path x")
    check_train_flags(stored, num_heads=2, pair_offset=32, source="--lam_path x")
    assert "trained with pair_offset 5" in capsys.readouterr().out


def test_plain_pth_state_dict_loads_with_flags(dino_dir, tmp_path, capsys):
    """The `.pth` form (bare LAM state dict, no Lightning wrapper, no hyper_parameters): flags size it."""
    from latentvla.lam.image_lam_checkpoint import load_image_lam

    src = tiny_model(dino_dir, pair_offset=5, action_dim=7)
    ckpt = torch.load(univla_lightning_ckpt(src, tmp_path / "x.ckpt", layers=1, with_action_decoder=True))
    torch.save({k[len("lam."):]: v for k, v in ckpt["state_dict"].items()}, tmp_path / "lam.pth")
    model, meta = load_image_lam(tmp_path / "lam.pth", num_heads=2, pair_offset=5)
    assert (model.config.pair_offset, model.config.action_dim) == (5, 7)
    torch.testing.assert_close(model.action_decoder[2].bias, src.action_decoder[2].bias)
    assert meta["settings"]["action_dim"] == "7 (action_decoder.2 outputs 35 / pair_offset 5)"
