"""LatentVLA at Qwen3-VL-2B-Instruct's real shapes (random weights): parameters, checkpoint bytes, memory, speed.

    python benchmarks/real_shapes.py                                   # CPU, full depth, all five variants
    python benchmarks/real_shapes.py --num_layers 2 --vision_depth 2 --steps 2 --variants baseline,la_tok  # quick
    python benchmarks/real_shapes.py --vlm_path DIR --json cpu.json    # reuse a `tiny-vlm --preset qwen3-vl-2b` dir
    python benchmarks/real_shapes.py --device cuda --vlm_path DIR --json gpu.json    # H100/H200: bf16, sdpa vs flash

The backbone is `latentvla tiny-vlm --preset qwen3-vl-2b` (28 LLM layers, 24 vision blocks, vocab
151936, bf16 on disk; written to a temp dir unless --vlm_path is given, ~1 min and ~5 GB at full
depth). LIBERO platform (2 cameras, chunk P = 8, D = 7), 224 px images, LoRA rank 64 (the training
defaults), la_tok with a stand-in action tokenizer (256 codes). Each variant runs in a fresh
subprocess of this script (`--_one_variant`), so its peak RSS is its own and only one model is in
memory at a time (the fp32 full-depth model is ~9 GB).

CPU (default), per variant: trainable parameters by component ("action head" alone included),
policy checkpoint bytes MEASURED (`save_policy_checkpoint`, the files summed), optimizer state
MEASURED (`torch.save({"optimizer": AdamW.state_dict()})` after the timed steps; the expected
figure of `latentvla.vla.parameters.checkpoint_sizes` is printed next to it), newest-checkpoint
bytes (= policy + optimizer state, what `latentvla train` keeps with the newest step), peak RSS
(`ru_maxrss` of the variant's process), training-step time at batch 1 (forward + backward + AdamW,
median of --steps after one warm-up step) and inference latency per chunk at batch 1 (median of
--infer_calls `predict_actions` calls after one warm-up).

CUDA (`--device cuda`), per variant x attention (`sdpa`, and `flash_attention_2` when flash_attn is
installed) x batch size (--batch_sizes, default 8,16,32): bf16 backbone weights
(`VLAConfig(dtype="bfloat16")`) and bf16 autocast for the training step as `latentvla train` does;
training samples/s (median step), peak memory (`torch.cuda.max_memory_allocated`, reset per row:
weights + optimizer state + activations), MFU; at batch 1 the inference latency per chunk and the
chunk-amortised action rate (chunk_len / latency, "Hz"; goal >= 250 Hz) — measured as the deployed
policy runs (`VLAPolicy`/`latentvla serve`: bf16 backbone, fp32 head, no autocast) and with bf16
autocast. An OOM is reported in its row instead of stopping the run.

MFU = model FLOPs per step / step time / --peak_tflops (989 = H100/H200 SXM dense bf16). Model FLOPs
per step, matmul parameters only (embedding tables are lookups; the lm_head is never applied):
  2 x N_vision x patches      the frozen vision tower: forward only (no gradient reaches it)
+ 4 x N_llm x tokens          the frozen LLM linears: forward + input gradients (LoRA sits on every layer)
+ 6 x N_trainable x tokens    LoRA, head, projectors: forward + input and weight gradients (an upper
                              bound: the head sees only the image and query tokens)
where tokens = B x sequence length and patches = B x images x 196 at 224 px. Attention-score FLOPs
are neglected (sequences of ~150 tokens). `vla_step.py` uses 4 x backbone params x tokens instead.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Parameter groups shown as columns (names of latentvla.vla.parameters.parameter_table).
COMPONENTS = ("lora", "new token rows", "action head", "proprio projector", "strategy")
GOAL_HZ = 250


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _median_time(fn, n: int, dev) -> float:
    """Median seconds of n calls of fn, synchronised around each call."""
    from vla_step import sync

    times = []
    for _ in range(n):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def model_flops(model, batch: dict) -> float:
    """Model FLOPs of one training step (see the module docstring)."""
    n_vis = n_llm = n_train = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            n_train += p.numel()
        elif ".visual." in name:
            n_vis += p.numel() if p.ndim >= 2 else 0
        elif "embed_tokens" not in name and "lm_head" not in name:
            n_llm += p.numel() if p.ndim >= 2 else 0
    B, L = batch["input_ids"].shape
    patches = int(batch["image_grid_thw"].prod(-1).sum())  # pre-merge patches of all images in the batch
    return 2 * n_vis * patches + 4 * n_llm * B * L + 6 * n_train * B * L


def build_model(args, vla_id: str, dev, attn=None):
    import torch
    from vla_step import _Tok

    from latentvla.robots import get_platform
    from latentvla.vla.configuration_vla import VLAConfig
    from latentvla.vla.modeling_vla import LatentVLA

    torch.manual_seed(0)
    cfg = VLAConfig(vla_id=vla_id, vlm_path=str(args.vlm_path), default_image_size=args.image_size,
                    lora_rank=args.lora_rank, codebook_size=256, attn_implementation=attn,
                    dtype="bfloat16" if dev.type == "cuda" else "float32")
    tok = _Tok(256) if vla_id == "la_tok" else None
    return LatentVLA.from_config(cfg, get_platform("libero"), action_tokenizer=tok, device=dev)


def make_batch(model, n: int, args, dev) -> dict:
    from vla_step import samples

    batch = model.processor.collate(samples(n, model.platform, args.image_size))
    return {k: v.to(dev) for k, v in batch.items()}


def parameter_columns(model) -> dict:
    from latentvla.vla.parameters import checkpoint_sizes, parameter_table

    rows = {r["component"]: r for r in parameter_table(model)}
    out = {f"{c} M": rows[c]["trainable"] / 1e6 if c in rows else 0.0 for c in COMPONENTS}
    out["trainable M"] = sum(r["trainable"] for r in rows.values()) / 1e6
    out["frozen M"] = sum(r["frozen"] for r in rows.values()) / 1e6
    sizes = checkpoint_sizes(model, keep_checkpoints=3)
    out["policy MB expected"] = sizes["policy_weights"] / 1e6
    out["optimizer MB expected"] = (sizes["newest_checkpoint"] - sizes["policy_weights"]) / 1e6
    return out


# ----------------------------------------------------------------------------- CPU: one variant
def run_cpu_variant(args, vla_id: str) -> list[dict]:
    import torch

    from latentvla.vla.checkpoint import save_policy_checkpoint

    dev = torch.device("cpu")
    t0 = time.perf_counter()
    model = build_model(args, vla_id, dev)
    row = {"variant": vla_id, "device": "cpu", "threads": torch.get_num_threads(), "load_s": time.perf_counter() - t0}
    row.update(parameter_columns(model))
    batch = make_batch(model, 1, args, dev)
    row["seq"] = int(batch["input_ids"].shape[1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        out = model(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    model.train()
    step()  # warm-up (also allocates AdamW's moments)
    row["step_s"] = _median_time(step, args.steps, dev)
    model.eval()
    model.predict_actions(batch)  # warm-up
    row["infer_s_chunk"] = _median_time(lambda: model.predict_actions(batch), args.infer_calls, dev)

    opt.zero_grad(set_to_none=True)  # frees the gradients before the checkpoint copies
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        ckpt = save_policy_checkpoint(Path(tmp) / "policy", model, train_config={}, statistics={})
        row["policy MB"] = _dir_bytes(ckpt) / 1e6
        torch.save({"optimizer": opt.state_dict()}, Path(tmp) / "training_state.pt")
        row["optimizer MB"] = (Path(tmp) / "training_state.pt").stat().st_size / 1e6
    row["newest ckpt MB"] = row["policy MB"] + row["optimizer MB"]
    row["peak RSS GB"] = _peak_rss_bytes() / 1e9
    return [row]


# ----------------------------------------------------------------------------- CUDA: one variant
def run_cuda_variant(args, vla_id: str) -> list[dict]:
    import torch

    dev = torch.device(args.device)
    attns = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    amp = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)  # noqa: E731
    rows = []
    for attn in attns:
        base = {"variant": vla_id, "device": torch.cuda.get_device_name(), "attn": attn}
        try:
            model = build_model(args, vla_id, dev, attn=attn)
        except Exception as e:  # e.g. a flash-attn build that does not match torch
            rows.append({**base, "error": f"load: {type(e).__name__}: {str(e)[:200]}"})
            continue
        params = parameter_columns(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for b in args.batch_sizes:
            row = {**base, "batch": b, **params}
            oom = False
            try:
                batch = make_batch(model, b, args, dev)
                row["seq"] = int(batch["input_ids"].shape[1])
                flops = model_flops(model, batch)

                # step() is timed in this iteration only. It reads model / batch / opt from the enclosing
                # scope on purpose (not as bound defaults): setting them to None below frees their memory.
                def step():
                    with amp():
                        out = model(batch)  # noqa: B023
                    opt.zero_grad(set_to_none=True)  # noqa: B023
                    out["loss"].backward()
                    opt.step()  # noqa: B023

                model.train()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                for _ in range(args.warmup):
                    step()
                step_s = _median_time(step, args.steps, dev)
                row.update({"step_ms": step_s * 1e3, "samples_s": b / step_s,
                            "peak GiB": torch.cuda.max_memory_allocated() / 2**30,
                            "TFLOP/s": flops / step_s / 1e12, "mfu": flops / step_s / (args.peak_tflops * 1e12)})
            except torch.cuda.OutOfMemoryError:
                oom = True
            except RuntimeError as e:  # a kernel error; keep the other rows
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            if oom:  # outside the except block: the traceback no longer pins the step's tensors
                row.update({"error": "OOM", "peak GiB": torch.cuda.max_memory_allocated() / 2**30})
            batch = None
            opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)

        # Inference at batch 1: the deployed path (no autocast) and with bf16 autocast.
        row = {**base, "batch": 1, "infer": True}
        try:
            model.eval()
            batch = make_batch(model, 1, args, dev)
            row["seq"] = int(batch["input_ids"].shape[1])
            for key, ctx in (("", contextlib.nullcontext), ("_amp", amp)):
                with ctx():
                    for _ in range(3):
                        model.predict_actions(batch)
                    s = _median_time(lambda: model.predict_actions(batch), args.infer_calls, dev)  # noqa: B023
                row[f"infer_ms{key}"] = s * 1e3
                row[f"Hz{key}"] = model.chunk_len / s
        except torch.cuda.OutOfMemoryError:
            row["error"] = "OOM"
        except RuntimeError as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        model = opt = batch = None
        gc.collect()
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- driver
def ensure_backbone(args, tmp: str) -> str:
    if args.vlm_path:
        return args.vlm_path
    from latentvla.vla.configuration_tiny import TinyVLMConfig
    from latentvla.vla.tiny import write_tiny_vlm

    t = time.perf_counter()
    out = write_tiny_vlm(TinyVLMConfig(out_dir=str(Path(tmp) / "qwen3vl_2b_shape"), preset="qwen3-vl-2b",
                                       num_layers=args.num_layers, vision_depth=args.vision_depth))
    print(f"(wrote the backbone in {time.perf_counter() - t:.0f} s)", flush=True)
    return str(out)


def run_variant_subprocess(args, vla_id: str, vlm_path: str, tmp: str) -> list[dict]:
    """This script in a fresh process for one variant; its rows come back through a JSON file."""
    result = Path(tmp) / f"{vla_id}.json"
    cmd = [sys.executable, __file__, "--_one_variant", vla_id, "--_result", str(result), "--vlm_path", vlm_path,
           "--device", args.device, "--steps", str(args.steps), "--infer_calls", str(args.infer_calls),
           "--image_size", str(args.image_size), "--lora_rank", str(args.lora_rank),
           "--batch_sizes", ",".join(map(str, args.batch_sizes)), "--warmup", str(args.warmup),
           "--peak_tflops", str(args.peak_tflops), "--tmp_dir", args.tmp_dir or tmp]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    if rc != 0 or not result.is_file():
        why = "killed (out of memory?)" if rc in (-9, 137) else f"exit code {rc}"
        return [{"variant": vla_id, "device": args.device, "error": why}]
    rows = json.loads(result.read_text())
    print(f"({vla_id}: {time.perf_counter() - t:.0f} s)", flush=True)
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return "" if v is None else str(v)


def print_table(rows: list[dict], cols: list[str]) -> None:
    cols = [c for c in cols if any(c in r for r in rows)]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")


CPU_COLS = ["variant", "trainable M", *[f"{c} M" for c in COMPONENTS], "frozen M", "policy MB",
            "policy MB expected", "optimizer MB", "optimizer MB expected", "newest ckpt MB", "peak RSS GB", "seq",
            "load_s", "step_s", "infer_s_chunk", "error"]
CUDA_TRAIN_COLS = ["variant", "attn", "batch", "seq", "step_ms", "samples_s", "peak GiB", "TFLOP/s", "mfu", "error"]
CUDA_INFER_COLS = ["variant", "attn", "seq", "infer_ms", "Hz", "infer_ms_amp", "Hz_amp", "error"]


def report(rows: list[dict], args, depth: tuple[int, int]) -> None:
    shape = (f"Qwen3-VL-2B shapes, {depth[0]} LLM layers / {depth[1]} vision blocks, image {args.image_size}, "
             f"LoRA r {args.lora_rank}")
    if args.device == "cpu":
        threads = next((r["threads"] for r in rows if "threads" in r), "?")
        print(f"\n## CPU ({threads} threads), fp32, batch 1, {shape}\n")
        print_table(rows, CPU_COLS)
        return
    name = next((r["device"] for r in rows if r.get("device") not in (None, "cuda")), "cuda")
    print(f"\n## {name}, bf16, {shape}; MFU against {args.peak_tflops:g} TFLOP/s\n")
    print_table([r for r in rows if not r.get("infer")], CUDA_TRAIN_COLS)
    print(f"\nInference at batch 1 (Hz = chunk-amortised actions/s = chunk_len / latency; goal >= {GOAL_HZ} Hz)\n")
    infer = [r for r in rows if r.get("infer")]
    print_table(infer, CUDA_INFER_COLS)
    best = max((r.get("Hz", 0.0) for r in infer), default=0.0)
    print(f"\nbest: {best:.0f} Hz -> goal {GOAL_HZ} Hz {'met' if best >= GOAL_HZ else 'NOT met'}")


def main(argv=None) -> int:
    from latentvla.vla.configuration_vla import VLA_IDS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VLA_IDS), help="comma-separated vla_ids")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--vlm_path", default=None, help="existing qwen3-vl-2b preset dir (default: write one, temp dir)")
    ap.add_argument("--num_layers", type=int, default=None, help="LLM layers of the written backbone (default 28)")
    ap.add_argument("--vision_depth", type=int, default=None, help="vision blocks of the written backbone (default 24)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default: 3 on CPU, 10 on CUDA)")
    ap.add_argument("--warmup", type=int, default=2, help="CUDA: untimed training steps per row (CPU: always 1)")
    ap.add_argument("--infer_calls", type=int, default=None, help="timed predict_actions calls (default: 3; CUDA 20)")
    ap.add_argument("--batch_sizes", default="8,16,32", help="CUDA training batch sizes (CPU: batch 1)")
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--lora_rank", type=int, default=64, help="LoRA rank (the training default)")
    ap.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM: 989)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--tmp_dir", default=None, help="where the backbone and checkpoints are written (default: $TMPDIR)")
    ap.add_argument("--json", default=None, help="also write the rows to this file (rewritten after each variant)")
    ap.add_argument("--_one_variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.steps = args.steps or (10 if cuda else 3)
    args.infer_calls = args.infer_calls or (20 if cuda else 3)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args._one_variant:  # child: one variant, rows to --_result
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        rows = (run_cuda_variant if cuda else run_cpu_variant)(args, args._one_variant)
        for r in rows:
            r["peak RSS GB"] = _peak_rss_bytes() / 1e9
        Path(args._result).write_text(json.dumps(rows, indent=1))
        return 0

    if cuda:
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device", file=sys.stderr)
            return 2
    variants = [v for v in args.variants.split(",") if v]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        vlm = ensure_backbone(args, tmp)
        cfg = json.loads((Path(vlm) / "config.json").read_text())
        depth = (cfg["text_config"]["num_hidden_layers"], cfg["vision_config"]["depth"])
        print(f"backbone {vlm}: {depth[0]} LLM layers, {depth[1]} vision blocks", flush=True)
        for v in variants:
            rows += run_variant_subprocess(args, v, vlm, tmp)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))

    report(rows, args, depth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
