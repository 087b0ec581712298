"""VLA training-step and inference benchmark, per variant.

    python benchmarks/vla_step.py                       # CPU, tiny backbone, all variants
    python benchmarks/vla_step.py --batch_sizes 1,8 --steps 5 --variants baseline,la_tok
    python benchmarks/vla_step.py --gpu                 # + Qwen3-VL-2B-shaped random weights on GPU (bf16)

Per variant and batch size it prints: training step time (forward + backward + AdamW),
samples/s, inference latency per chunk (one backbone + one head pass), the activation memory
saved for backward (bytes of non-parameter tensors kept by autograd; device independent), and
what full-vocabulary fp32 logits would have cost (B x L x V x 4 bytes; we never compute them), for
this backbone's V and for Qwen3-VL-2B's V = 151936 at the same sequence length.
On GPU (`--gpu`, only when CUDA is available) also peak memory, sdpa vs flash_attention_2 (when
installed) and model-FLOPs utilisation (4 x backbone params x tokens per step: forward + input
gradients of the frozen backbone; LoRA/head FLOPs neglected) against `--peak_tflops`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latentvla.robots import get_platform
from latentvla.vla.configuration_tiny import TINY_VLM_PRESETS, TinyVLMConfig
from latentvla.vla.configuration_vla import VLA_IDS, VLAConfig
from latentvla.vla.modeling_vla import LatentVLA
from latentvla.vla.tiny import write_tiny_vlm

QWEN3VL_2B_VOCAB = TINY_VLM_PRESETS["qwen3-vl-2b"]["vocab_size"]  # what full-vocabulary logits would cost


class _Tok:
    """Stand-in action tokenizer for timing la_tok (codes from the first action dim)."""

    def __init__(self, m: int):
        self.codebook_size = m

    def encode(self, a):
        return ((a[..., 0].clamp(-1, 1) + 1) / 2 * (self.codebook_size - 1)).round().long()


def samples(n: int, platform, image_size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    P, D = platform.chunk_len, platform.action_dim
    return [{"images": rng.integers(0, 256, (platform.num_cameras, image_size, image_size, 3), dtype=np.uint8),
             "instruction": "put the bowl on the plate",
             "proprio": rng.uniform(-1, 1, platform.proprio_dim).astype(np.float32),
             "actions": rng.uniform(-1, 1, (P, D)).astype(np.float32), "action_pad": np.zeros(P, bool),
             "latent_idx": rng.integers(0, 16, (P, 4)), "latent_z": rng.normal(size=(P, 4, 128)).astype(np.float32)}
            for _ in range(n)]


@contextlib.contextmanager
def saved_activation_bytes(model, box: list):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    box.append(sum(seen.values()))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(vlm_dir, vla_id, batch_size, steps, image_size, device, attn=None, peak_tflops=None):
    platform = get_platform("libero")
    dev = torch.device(device)
    cfg = VLAConfig(vla_id=vla_id, vlm_path=str(vlm_dir), default_image_size=image_size, attn_implementation=attn,
                    codebook_size=256)
    model = LatentVLA.from_config(cfg, platform, action_tokenizer=_Tok(256) if vla_id == "la_tok" else None, device=dev)
    batch = {k: v.to(dev) for k, v in model.processor.collate(samples(batch_size, platform, image_size)).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def step():
        with amp:
            out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    model.train()
    step()  # warm-up
    box: list = []
    with saved_activation_bytes(model, box):
        with amp:
            out = model(batch)
    del out
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    step_s = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
    model.eval()
    with amp:
        model.predict_actions(batch)
        sync(dev)
        t = time.perf_counter()
        for _ in range(steps):
            model.predict_actions(batch)
        sync(dev)
    infer_s = (time.perf_counter() - t) / steps
    L = batch["input_ids"].shape[1]
    V = model.backbone.config.text_config.vocab_size
    row = {"variant": vla_id, "batch": batch_size, "seq": L, "step_ms": step_s * 1e3, "samples_s": batch_size / step_s,
           "infer_ms_chunk": infer_s * 1e3 / batch_size, "act_MiB": box[0] / 2**20,
           "fullvocab_MiB": batch_size * L * V * 4 / 2**20,
           "fullvocab_2B_MiB": batch_size * L * QWEN3VL_2B_VOCAB * 4 / 2**20, "attn": attn or "default"}
    if dev.type == "cuda":
        row["peak_GiB"] = peak
    if peak_tflops:
        n = sum(p.numel() for p in model.backbone.parameters())
        row["mfu"] = 4 * n * batch_size * L / step_s / (peak_tflops * 1e12)
    model = opt = None  # free the memory before empty_cache (step() still refers to both names)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def print_table(rows):
    cols = ["variant", "attn", "batch", "seq", "step_ms", "samples_s", "infer_ms_chunk", "act_MiB", "fullvocab_MiB",
            "fullvocab_2B_MiB", "peak_GiB", "mfu"]
    cols = [c for c in cols if any(c in r for r in rows)]
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VLA_IDS))
    ap.add_argument("--batch_sizes", default="1,8")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--gpu", action="store_true", help="also benchmark Qwen3-VL-2B shapes on CUDA (bf16)")
    ap.add_argument("--gpu_batch_sizes", default="8,32")
    ap.add_argument("--peak_tflops", type=float, default=989.0, help="GPU dense bf16 peak for MFU (H100 SXM: 989)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_vlm(TinyVLMConfig(out_dir=str(Path(tmp) / "tiny")))
        rows = [bench(tiny, v, int(b), args.steps, args.image_size, "cpu") for v in variants
                for b in args.batch_sizes.split(",")]
        print(f"\n## CPU, tiny Qwen3-VL (hidden 64, 2 layers), {torch.get_num_threads()} threads, image "
              f"{args.image_size}")
        print_table(rows)
        if args.gpu:
            if not torch.cuda.is_available():
                print("\n(--gpu: no CUDA device; skipped)")
                return
            big = write_tiny_vlm(TinyVLMConfig(out_dir=str(Path(tmp) / "qwen3vl_2b_shape"), preset="qwen3-vl-2b"))
            attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
            rows = [bench(big, v, int(b), args.steps, args.image_size, "cuda", attn=a, peak_tflops=args.peak_tflops)
                    for a in attns for v in variants for b in args.gpu_batch_sizes.split(",")]
            print(f"\n## {torch.cuda.get_device_name()}, Qwen3-VL-2B shapes (random bf16), image {args.image_size}")
            print_table(rows)


if __name__ == "__main__":
    main()
