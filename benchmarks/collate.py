"""VLA collate cost: uint8 images (patchified later on the model's device) vs numpy pixel_values.

    python benchmarks/collate.py                      # batch 32, LIBERO-shaped samples, 1 torch thread
    python benchmarks/collate.py --batch_size 8 --repeats 20

Per path it prints the CPU time of `model.processor.collate` per sample (what a DataLoader worker
spends), the bytes per sample the batch ships through shared memory / host->device, and the time
to turn the batch's images into `pixel_values` where that now happens (the model, per sample; on
CPU and, when available, CUDA). "numpy pixel_values" is the pre-change collate: the same processor
with `vision_inputs` replaced by the numpy image processor (`QwenVLImageProcessor.__call__`).
Samples: 2 cameras at 224², 8-dim proprio, 8x7 actions (LIBERO); tokenizer of the tiny Qwen3-VL.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latentvla.robots import get_platform
from latentvla.vla.configuration_tiny import TinyVLMConfig
from latentvla.vla.configuration_vla import VLAConfig
from latentvla.vla.modeling_vla import LatentVLA
from latentvla.vla.tiny import write_tiny_vlm


def libero_samples(n: int, image_size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"images": rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8),
             "instruction": "put the bowl on the plate", "proprio": rng.uniform(-1, 1, 8).astype(np.float32),
             "actions": rng.uniform(-1, 1, (8, 7)).astype(np.float32)} for _ in range(n)]


def host_patchify_processor(processor):
    """The pre-change collate: pixel_values made in numpy inside the collate (so inside the workers)."""
    old = copy.copy(processor)
    old.vision_inputs = old.image_processor  # instance attribute: every batch takes the numpy path
    return old


def median_ms(fn, repeats: int, sync=lambda: None) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def batch_bytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))


def model_side_ms(image_processor, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """images -> pixel_values per call, on CPU and (when present) CUDA in bf16 as in training."""
    out = {"cpu": median_ms(lambda: image_processor.pixel_values_from_images(images), repeats)}
    if torch.cuda.is_available():
        on_gpu = images.cuda()
        out["cuda bf16"] = median_ms(lambda: image_processor.pixel_values_from_images(on_gpu, torch.bfloat16), repeats,
                                     torch.cuda.synchronize)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers run with 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        vlm = write_tiny_vlm(TinyVLMConfig(out_dir=str(Path(tmp) / "vlm")))
        cfg = VLAConfig(vla_id="baseline", vlm_path=str(vlm), default_image_size=args.image_size, lora_rank=0)
        model = LatentVLA.from_config(cfg, get_platform("libero"), device="cpu")
    new = model.processor
    old = host_patchify_processor(new)
    samples = libero_samples(args.batch_size, args.image_size)
    B = args.batch_size
    images = new.collate(samples)["images"]
    device_ms = model_side_ms(new.image_processor, images, args.repeats)
    rows = [("numpy pixel_values (before)", old, "-"),
            ("uint8 images (after)", new, ", ".join(f"{k} {v / B:.3g}" for k, v in device_ms.items()))]
    print(f"batch {B}, {args.image_size}² x 2 cameras, {args.threads} torch thread(s), median of {args.repeats}")
    print("path | collate ms/sample | bytes/sample | images->pixel_values ms/sample (model)")
    print("--- | --- | --- | ---")
    for name, processor, model_ms in rows:
        ms = median_ms(lambda processor=processor: processor.collate(samples), args.repeats) / B
        print(f"{name} | {ms:.3g} | {batch_bytes(processor.collate(samples)) / B:,.0f} | {model_ms}")


if __name__ == "__main__":
    main()
