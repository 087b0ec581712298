"""Paper-compatible shim: `python latent.py FILE.tfrecord --lam_path CKPT`.

Annotates one TFRecord shard with image-LAM latent actions (`steps/latent_idx`, `steps/latent_z`)
and writes it under `output/` beside the input (same file name), as the paper's README describes.
For a whole dataset (all shards, features.json / dataset_info.json declaring the new keys) use
`latentvla lam annotate --dataset_dir DIR --lam_ckpt CKPT`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from latentvla.errors import LatentVLAError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tfrecord", type=Path, help="input shard (<name>-<split>.tfrecord-XXXXX-of-YYYYY)")
    p.add_argument("--lam_path", required=True, help="LAM checkpoint: ours (directory) or a UniVLA Lightning .ckpt")
    p.add_argument("--dino_path", default=None, help="DINOv2 backbone when the checkpoint carries none")
    p.add_argument("--output_dir", type=Path, default=None, help="default: output/ beside the input")
    p.add_argument("--image_key", default="observation/image", help="primary camera step key")
    p.add_argument("--k", "--pair_offset", dest="pair_offset", type=int, default=11, help="pair (t, min(t+k, T-1))")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_heads", type=int, default=None,
                   help="heads of a UniVLA .ckpt (default: its hyper_parameters, else 12)")
    p.add_argument("--lam_pair_offset", type=int, default=None,
                   help="k the .ckpt was trained with (default: its goal_image_step, else 32)")
    p.add_argument("--non_strict", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    try:
        from latentvla.lam.annotate import annotate_shard_file
        from latentvla.lam.image_lam_checkpoint import load_image_lam
        from latentvla.lam.latent_labeler import LatentLabeler
        from latentvla.utils.hub import resolve_model_flags

        out = (args.output_dir or args.tfrecord.parent / "output") / args.tfrecord.name
        if out.exists() and not args.overwrite:
            print(f"{out}: already annotated; skipping (pass --overwrite to redo it)")
            return 0
        # either may be a Hugging Face repo id (a UniVLA repo with one .ckpt: that file)
        resolve_model_flags(args, {"lam_path": (".ckpt",), "dino_path": (".pth", ".pt")})
        model, _ = load_image_lam(args.lam_path, dino_path=args.dino_path, num_heads=args.num_heads,
                                  pair_offset=args.lam_pair_offset, strict=not args.non_strict, with_text_encoder=False)
        labeler = LatentLabeler(model, pair_offset=args.pair_offset, batch_size=args.batch_size, device=args.device)
        try:
            annotate_shard_file(args.tfrecord, out, labeler, args.image_key, overwrite=args.overwrite)
        finally:
            labeler.close()
    except LatentVLAError as e:
        print(f"latent.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
