"""Training throughput: samples/s and the fraction of step time spent waiting for data.

Runs the real `latentvla train` path (VLADataset -> collate -> LatentVLA -> loss -> AdamW) for a
few steps per configuration and reads the per-step records of `metrics.jsonl` (the first
`--warmup` steps are dropped). Also measures the input pipeline alone (DataLoader + collate, no
model) so the data bound is visible.

    python benchmarks/train_throughput.py                      # tiny Qwen3-VL, synthetic LIBERO data, CPU
    python benchmarks/train_throughput.py --vlm_path QWEN3VL_2B --data_root_dir DATA --data_mix libero_goal \
        --device cuda --batch_sizes 8,16 --workers 4                                                   # GPU

Without --vlm_path / --data_root_dir it writes a tiny Qwen3-VL and a synthetic LIBERO-layout
dataset (8 episodes x 40 steps, 128 px stored images) to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _fixtures(tmp: Path) -> tuple[str, str]:
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.vla.configuration_tiny import TinyVLMConfig
    from latentvla.vla.tiny import write_tiny_vlm

    vlm = tmp / "vlm"
    write_tiny_vlm(TinyVLMConfig(out_dir=str(vlm)))
    write_synthetic_dataset(tmp / "data", "libero_goal_no_noops", num_episodes=8, steps=40, image_size=128)
    return str(vlm), str(tmp / "data")


def data_only(args, vlm: str, data: str, batch: int, workers: int) -> float:
    """Samples/s of the input pipeline alone (decode, resize, augment, tokenize/patchify in collate)."""
    import torch

    from latentvla.data.dataset import VLADataset
    from latentvla.data.sampler import GlobalSampler
    from latentvla.robots import get_platform
    from latentvla.train.data_stream import MicroBatchStream
    from latentvla.vla.configuration_vla import VLAConfig
    from latentvla.vla.modeling_vla import LatentVLA

    torch.manual_seed(0)
    ds = VLADataset(data, args.data_mix, image_size=args.image_size, progress=False)
    model = LatentVLA.from_config(VLAConfig(vlm_path=vlm, default_image_size=args.image_size, lora_rank=4),
                                  get_platform(ds.platform.name), device="cpu")
    sampler = GlobalSampler(ds, seed=0)
    n_batches = min(args.steps * 2, len(sampler) // batch)
    stream = MicroBatchStream(ds, sampler, batch, model.processor.collate, n_batches, num_workers=workers)
    next(stream)  # start the workers
    t = time.perf_counter()
    for _ in range(n_batches - 1):
        next(stream)
    return (n_batches - 1) * batch / (time.perf_counter() - t)


def train_run(args, vlm: str, data: str, batch: int, workers: int, runs: Path) -> dict:
    from latentvla.config import parse_config
    from latentvla.train.configuration_train import TrainConfig
    from latentvla.train.run import train

    flags = ["--vlm_path", vlm, "--data_root_dir", data, "--data_mix", args.data_mix, "--vla_id", args.vla_id,
             "--default_image_size", str(args.image_size), "--per_device_batch_size", str(batch),
             "--max_steps", str(args.steps + args.warmup), "--num_workers", str(workers), "--save_checkpoint", "False",
             "--lora_rank", str(args.lora_rank), "--progress", "False", "--run_root_dir", str(runs),
             "--run_id", f"b{batch}_w{workers}"]
    if args.device:
        flags += ["--device", args.device]
    train(parse_config(TrainConfig, flags))
    recs = [json.loads(x) for x in (runs / f"b{batch}_w{workers}" / "metrics.jsonl").read_text().splitlines()]
    recs = recs[args.warmup:]
    return {"samples_per_s": statistics.median(r["samples_per_s"] for r in recs),
            "data_wait": statistics.mean(r["data_wait_fraction"] for r in recs)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vlm_path", default=None)
    p.add_argument("--data_root_dir", default=None)
    p.add_argument("--data_mix", default="libero_goal")
    p.add_argument("--vla_id", default="baseline")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_sizes", type=_ints, default=[4, 8])
    p.add_argument("--workers", type=_ints, default=[0, 2])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora_rank", type=int, default=4)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vlm, data = (args.vlm_path, args.data_root_dir) if args.vlm_path and args.data_root_dir else _fixtures(tmp)
        dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        print(f"vla_id={args.vla_id} image={args.image_size}px device={dev} threads={torch.get_num_threads()} "
              f"backbone={'tiny' if not args.vlm_path else args.vlm_path}")
        print(f"{'batch':>5} {'workers':>7} {'data-only samples/s':>20} {'train samples/s':>16} {'data-wait':>10}")
        for b in args.batch_sizes:
            for w in args.workers:
                d = data_only(args, vlm, data, b, w)
                t = train_run(args, vlm, data, b, w, tmp / "runs")
                print(f"{b:>5} {w:>7} {d:>20.1f} {t['samples_per_s']:>16.1f} {t['data_wait']:>10.1%}", flush=True)


if __name__ == "__main__":
    main()
