"""Helpers for the image-LAM tests: build checkpoints in UniVLA's (and DINOv2's original) layout."""

from __future__ import annotations

from pathlib import Path

import torch

# tiny LAM sizes used across the image-LAM tests (DINO from `latentvla tiny-dino`: 32 wide, 56 px, patch 14)
TINY = dict(model_dim=32, enc_blocks=1, dec_blocks=1, num_heads=2, latent_dim=16, codebook_size=8, num_codes=4,
            dino_dim=32, num_patches=16, image_size=56, pair_offset=4, action_dim=7)


def hf_to_original_dino(sd: dict, layers: int) -> dict:
    """Inverse of the loader's mapping: transformers names → original torch-hub DINOv2 names."""
    out = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
           "register_tokens": sd["embeddings.register_tokens"], "mask_token": sd["embeddings.mask_token"],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    for i in range(layers):
        h, o = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[o + f"attn.qkv.{kind}"] = torch.cat([sd[h + f"attention.{p}_proj.{kind}"] for p in "qkv"])
            out[o + f"attn.proj.{kind}"] = sd[h + f"attention.o_proj.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[o + f"{n}.{kind}"] = sd[h + f"{n}.{kind}"]
        out[o + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[o + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    return out


def univla_lightning_ckpt(model, path: Path, layers: int, with_action_decoder: bool = False, **extra) -> Path:
    """A Lightning checkpoint in UniVLA's layout (lam.<name>, dino_encoder.* original layout); `extra`
    adds top-level entries such as `hyper_parameters` / `datamodule_hyper_parameters`."""
    sd = {f"lam.{k}": v.clone() for k, v in model.lam_state_dict().items()
          if with_action_decoder or not k.startswith("action_decoder.")}
    dino = {k[len("model."):]: v for k, v in model.dino_encoder.state_dict().items()}
    sd.update({f"lam.dino_encoder.{k}": v.clone() for k, v in hf_to_original_dino(dino, layers).items()})
    torch.save({"state_dict": sd, "epoch": 0, "global_step": 10, **extra}, path)
    return path


def univla_hyper_parameters(cfg, **over) -> dict:
    """`hyper_parameters` as Lightning stores a DINO_LAM's init args (the paper's adds goal_image_step,
    action_dim); the optimizer entry is a pickled callable, as LightningCLI leaves it."""
    import functools

    hp = {"image_channels": 3, "lam_model_dim": cfg.model_dim, "lam_latent_dim": cfg.latent_dim,
          "lam_num_latents": cfg.codebook_size, "lam_patch_size": 14, "lam_enc_blocks": cfg.enc_blocks,
          "lam_dec_blocks": cfg.dec_blocks, "lam_num_heads": cfg.num_heads, "lam_dropout": 0.0, "vq_beta": 0.25,
          "log_interval": 1000, "log_path": "log_imgs", "task_name": "lam_libero", "stage": f"stage-{cfg.stage}",
          "optimizer": functools.partial(torch.optim.AdamW, lr=1e-4), "make_data_pair": False,
          "stage_one_ckpt": None, "goal_image_step": cfg.pair_offset, "action_dim": cfg.action_dim}
    hp.update(over)
    return hp
