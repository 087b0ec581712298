"""Throughput of `latentvla lam annotate` (image-LAM latent labels per transition).

    python benchmarks/annotate.py [--sizes tiny,paper] [--episodes 4] [--steps 50] [--device cpu] [--threads N]

Writes a LIBERO-shaped dataset (256² JPEG primary camera) to a temp dir, builds randomly
initialised models through the same config/checkpoint path as trained ones (throughput does not
depend on the weights) and times the whole annotation job end to end (read + JPEG decode + resize
+ DINO + LAM encoder + write), model loading excluded. Sizes:
- tiny: DINO 32-wide × 2 layers (56 px), LAM model_dim 32, 1 + 1 blocks
- paper: DINOv2 ViT-B/14 with 4 registers (224 px, 256 patches), LAM 768-wide, 12 + 12 blocks, 16 codes
Prints transitions/s and the JPEG decode + resize rate of the same frames (the input bound).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {
    "tiny": dict(dino=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56),
                 lam=dict(model_dim=32, enc_blocks=1, dec_blocks=1, num_heads=2, latent_dim=16, codebook_size=8)),
    "paper": dict(dino=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224),
                  lam=dict(model_dim=768, enc_blocks=12, dec_blocks=12, num_heads=12, latent_dim=128,
                           codebook_size=16)),
}


def build_checkpoint(size: str, out: Path) -> Path:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from latentvla.lam.configuration_image_lam import ImageLAMConfig
    from latentvla.lam.dino import DinoFeatures
    from latentvla.lam.image_lam import ImageLatentActionModel
    from latentvla.lam.image_lam_checkpoint import save_lam_checkpoint

    spec = SIZES[size]
    torch.manual_seed(0)
    dino = DinoFeatures(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(patch_size=14, num_register_tokens=4,
                                                                           **spec["dino"])))
    image = spec["dino"]["image_size"]
    cfg = ImageLAMConfig(dino_dim=spec["dino"]["hidden_size"], num_patches=(image // 14) ** 2, image_size=image,
                         num_codes=4, action_dim=7, **spec["lam"])
    save_lam_checkpoint(out, ImageLatentActionModel(cfg, dino=dino), step=0)
    return out


def decode_rate(data_dir: Path, image_size: int, limit: int = 200) -> float:
    from latentvla.data.tfds import TFDSBuilderDir
    from latentvla.lam.latent_labeler import decode_frame

    b = TFDSBuilderDir(data_dir)
    imgs = [im for ep in b.iter_episodes(keys=["observation/image"]) for im in ep["observation/image"]][:limit]
    t0 = time.perf_counter()
    for im in imgs:
        decode_frame(im, image_size)
    return len(imgs) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.data.tfds import TFDSBuilderDir
    from latentvla.lam.annotate import annotate_builder
    from latentvla.lam.image_lam_checkpoint import load_image_lam
    from latentvla.lam.latent_labeler import LatentLabeler

    tmp = Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    try:
        rng = np.random.default_rng(0)
        data = write_synthetic_dataset(tmp / "data", name="libero_goal_no_noops", num_episodes=args.episodes,
                                       steps=args.steps, image_size=256,
                                       image_fn=lambda e, t, cam, a: rng.integers(0, 256, (256, 256, 3), np.uint8))
        src = TFDSBuilderDir(data)
        n = sum(len(ep["action"]) for ep in src.iter_episodes(keys=["action"]))
        rows = []
        for size in args.sizes.split(","):
            model, _ = load_image_lam(build_checkpoint(size, tmp / f"lam_{size}"))
            labeler = LatentLabeler(model, pair_offset=11, batch_size=args.batch_size, device=args.device)
            out = tmp / "data" / f"out_{size}" / "1.0.0"
            t0 = time.perf_counter()
            annotate_builder(src, out, "observation/image", labeler, job={"size": size})
            dt = time.perf_counter() - t0
            rows.append((size, str(labeler.device), model.config.image_size, args.batch_size, n, dt, n / dt,
                         decode_rate(data, model.config.image_size)))
            labeler.close()
        print("\nsize | device | frame px | batch | transitions | seconds | transitions/s | decode+resize frames/s")
        print("--- | --- | --- | --- | --- | --- | --- | ---")
        for r in rows:
            print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.2f} | {r[6]:.1f} | {r[7]:.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
