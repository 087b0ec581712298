"""Data loader throughput: VLADataset + GlobalSampler + the training transport vs the JPEG-decode bound.

Writes a LIBERO-shaped RLDS dataset (default 40 episodes x 100 steps, 2 x 256^2 JPEG per step,
8-dim proprio, 7-dim actions), then measures training samples/s (224^2, augmentation on, action
chunk + proprio, default collate, `MicroBatchStream` = the trainer's DataLoader wrapper with its
shared-memory slot ring) and the peak RSS of the loader process tree for 0/1/2 DataLoader workers
and both resize filters (bicubic = default, Lanczos = the reference pipeline's), the JPEG decode
bound for the same images (simplejpeg and PIL, one process), per-stage CPU costs, and, for
reference, the naive path that parses the whole episode record for each sample.

    python benchmarks/data_loader.py [--episodes 40 --steps 100 --samples 1500 --batch_size 32]

`--lerobot` instead measures a LeRobot v3.0 copy (default 20 episodes x 100 frames, the same
textured 2 x 256^2 frames as AV1 video, GOP 2, written by `LeRobotWriter`): the same loader with
0/1/2 workers, the single-core random-access decode rate of the same mp4s (PyAV, one thread,
containers kept open), and, with `--lerobot_python PY` (a scratch venv holding `lerobot`),
lerobot's own `LeRobotDataset` + DataLoader on the same files (this script re-run under PY with
`--lerobot_reference DIR`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scene_fn(size: int):
    """Textured frames (JPEG size close to real LIBERO frames, ~10-20 KB at 256^2)."""
    cache: dict[tuple[int, str], np.ndarray] = {}

    def fn(e: int, t: int, camera: str, past_actions: np.ndarray) -> np.ndarray:
        key = (e, camera)
        if key not in cache:
            rng = np.random.default_rng([e, len(camera)])
            low = rng.uniform(0, 255, (size // 16, size // 16, 3))
            bg = np.kron(low, np.ones((16, 16, 1)))
            yy, xx = np.mgrid[0:size, 0:size] / size
            bg = 0.6 * bg + 80 * np.sin(8 * xx + 3 * e)[..., None] + 60 * yy[..., None]
            cache[key] = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255).astype(np.uint8)
        img = cache[key].copy()
        pos = past_actions[:, :2].sum(0) * 0.02 if len(past_actions) else np.zeros(2)
        cx, cy = (np.clip(0.5 + pos, 0.1, 0.9) * size).astype(int)
        r = size // 10
        img[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = (230, 40, 40)
        return img

    return fn


class PeakRSS:
    """Samples the summed RSS and PSS of this process and its children (peak of each).

    RSS counts a shared page once per process that maps it (the slot ring is mapped by the trainer
    and every worker); PSS splits it between them, so the PSS sum is the memory actually used.
    """

    def __init__(self, interval: float = 0.1):  # ~0.7 ms of CPU per tick (smaps), counted in the loader's CPU
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            rss = pss = 0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                for p in procs:
                    try:
                        info = p.memory_full_info()
                        rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def decode_bound(ds, indices, backend: str) -> float:
    """Images/s for decoding exactly the camera images of the given samples (one process)."""
    import io

    from PIL import Image

    blobs = []
    for i in indices:
        d, e, t = ds.locate(i)
        idx = ds.indexes[d]
        for c in range(ds.num_cameras):
            s, en = idx.image_spans[int(idx.ep_start[e]) + t, c]
            blobs.append(ds._read(idx.shard_path(e), int(s), int(en)))
    t0 = time.process_time()
    if backend == "simplejpeg":
        import simplejpeg

        for b in blobs:
            simplejpeg.decode_jpeg(b, colorspace="RGB")
    else:
        for b in blobs:
            Image.open(io.BytesIO(b)).convert("RGB").load()
    return len(blobs) / (time.process_time() - t0)  # CPU time: robust to other load on the machine


def stage_costs(ds, indices, size: int, batch_size: int) -> dict[str, float]:
    """CPU ms per stage (median over the probe samples of the best of 3 repeats, one thread).

    Per image: decode; per sample (its 2 cameras, one augmentation draw): crop+resize (antialiased
    bicubic, one torch call for both; Lanczos via PIL `resize(box=...)`), colour jitter (3x4 matrix,
    OpenCV or PIL), the whole `process_frames`; everything that is not an image (locate,
    augmentation draw, action chunk, proprio, instruction) and default collate.
    """
    import timeit

    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import default_collate

    from latentvla.data.transforms import color_matrix, decode_array, process_frames, sample_augment_params
    from latentvla.utils.seeding import derive_seed

    def best(fn, number=5):
        return min(timeit.repeat(fn, number=number, repeat=3, timer=time.process_time)) / number * 1000

    try:
        import cv2
    except ImportError:
        cv2 = None
    rows: dict[str, list[float]] = {}
    for i in indices[:20]:
        d, e, t = ds.locate(int(i))
        idx = ds.indexes[d]
        blobs = [ds._read(idx.shard_path(e), *(int(v) for v in idx.image_spans[int(idx.ep_start[e]) + t, c]))
                 for c in range(2)]
        p = sample_augment_params(np.random.default_rng(int(i)))
        arrs = [decode_array(b) for b in blobs]
        imgs = [Image.fromarray(a) for a in arrs]
        H, W = arrs[0].shape[:2]
        box = (p.crop[0] * W, p.crop[1] * H, p.crop[2] * W, p.crop[3] * H)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        small = np.asarray(imgs[0].resize((size, size), Image.LANCZOS, box=box))
        m = color_matrix(p, arrs[0][::8, ::8].mean(axis=(0, 1)))

        # The stage closures below read this iteration's images and are timed before the next iteration.
        def torch_resize():
            crops = torch.stack([torch.from_numpy(a)[y0:y1, x0:x1] for a in arrs]).permute(0, 3, 1, 2)  # noqa: B023
            return F.interpolate(crops, size=(size, size), mode="bicubic", antialias=True)

        stages = [
            ("decode one image (simplejpeg)", lambda: decode_array(blobs[0]), 1),  # noqa: B023
            ("crop+resize, bicubic (torch uint8, both cameras in one call)", torch_resize, 2),
            ("crop+resize, Lanczos (PIL resize(box=...))",
             lambda: imgs[0].resize((size, size), Image.LANCZOS, box=box), 1),  # noqa: B023
            ("colour jitter, 3x4 matrix, PIL convert",
             lambda: Image.fromarray(small).convert("RGB", m), 1),  # noqa: B023
            ("process_frames total, bicubic (decode+crop+resize+jitter)",
             lambda: process_frames(blobs, size, p, "bicubic"), 2),  # noqa: B023
            ("process_frames total, Lanczos", lambda: process_frames(blobs, size, p, "lanczos"), 2),  # noqa: B023
        ]
        if cv2:
            m34 = np.asarray(m, np.float32).reshape(3, 4)
            stages.insert(3, ("colour jitter, 3x4 matrix, OpenCV transform",
                              lambda: cv2.transform(small, m34), 1))  # noqa: B023
        for name, fn, per in stages:
            rows.setdefault(name + " — per image", []).append(best(fn) / per)

    def non_image(i):
        d, e, t = ds.locate(i)
        sample_augment_params(np.random.default_rng(derive_seed(ds.seed, ds.epoch, int(i)) % (2**63)))
        ds.action_chunk(d, e, t, ds.chunk_len), ds.proprio(d, e, t), ds.instruction(d, e), ds.base_sample(d, e, t)

    rows["per sample: non-image work (index, chunk, proprio, aug draw)"] = [
        best(lambda: [non_image(int(i)) for i in indices[:50]], 3) / 50]
    batch = [ds[int(i)] for i in indices[:batch_size]]
    torch.set_num_threads(1)
    rows["per sample: default collate (in-process)"] = [best(lambda: default_collate(batch), 3) / batch_size]
    rows["per sample: VLADataset.__getitem__ total (in-process)"] = [
        best(lambda: [ds[int(i)] for i in indices[:50]], 3) / 50]
    return {k: float(np.median(v)) for k, v in rows.items()}


def naive_rate(ds, indices) -> float:
    """Samples/s when every sample parses its whole episode record (no byte-range index)."""
    from latentvla.data.example import decode_example
    from latentvla.data.tfrecord import read_record_at
    from latentvla.data.transforms import process_image, sample_augment_params

    t0 = time.process_time()
    for i in indices:
        d, e, t = ds.locate(i)
        idx = ds.indexes[d]
        rec = decode_example(read_record_at(idx.shard_path(e), int(idx.ep_offset[e])))
        p = sample_augment_params(np.random.default_rng(int(i)))
        for cam in ("steps/observation/image", "steps/observation/wrist_image"):
            process_image(rec[cam][t], ds.image_size, p)
    return len(indices) / (time.process_time() - t0)


def tree_cpu_seconds() -> float:
    """User+system CPU seconds of this process and its live children (DataLoader workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for c in me.children(recursive=True):
        try:
            total += sum(c.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def loader_rate(ds, workers: int, samples: int, batch_size: int, seed: int, resample: str,
                shared_ring: bool = True) -> tuple[float, float, float, float]:
    """The training transport: GlobalSampler -> MicroBatchStream (DataLoader workers, shared slot ring)."""
    import torch

    from latentvla.data.sampler import GlobalSampler
    from latentvla.train.data_stream import MicroBatchStream

    torch.set_num_threads(1)
    ds.resample = resample
    warm = 2
    n_batches = min(samples, len(ds)) // batch_size - warm  # one epoch at most
    stream = MicroBatchStream(ds, GlobalSampler(ds, seed=seed), batch_size, None, batches_per_epoch=n_batches + warm,
                              num_workers=workers, seed=seed, shared_ring=shared_ring)
    with PeakRSS() as mem:
        for _ in range(warm):
            next(stream)
        c0, t0 = tree_cpu_seconds(), time.perf_counter()
        for _ in range(n_batches):
            next(stream)
        dt = time.perf_counter() - t0
        cpu = tree_cpu_seconds() - c0
        stream.close()
    n = n_batches * batch_size
    return n / dt, n / cpu, mem.peak / 2**20, mem.peak_pss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=None, help="default 40 (RLDS) / 20 (--lerobot)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1500, help="timed samples per configuration")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--image_aug", type=int, default=1, help="1: training augmentation (random crop, colour jitter); "
                                                            "0: none (with --image_size 256, lerobot's own work)")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (empty: only the decode "
                                                       "bound and stages)")
    ap.add_argument("--out_dir", default=None, help="keep the dataset here (default: a temp dir, removed)")
    ap.add_argument("--lerobot", action="store_true", help="the LeRobot video rows instead of the RLDS ones")
    ap.add_argument("--lerobot_python", default=None, help="python of a venv with lerobot, for its loader's row")
    ap.add_argument("--lerobot_reference", default=None, help=argparse.SUPPRESS)  # internal: run under lerobot
    args = ap.parse_args()

    if args.lerobot_reference:
        return lerobot_reference(args)
    if args.lerobot:
        return lerobot_main(args)
    args.episodes = args.episodes or 40
    from latentvla.data.dataset import VLADataset
    from latentvla.data.synthetic import write_synthetic_dataset

    root = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="latentvla_bench_"))
    try:
        t0 = time.perf_counter()
        if not (root / "libero_goal_no_noops").exists():
            write_synthetic_dataset(root, "libero_goal_no_noops", num_episodes=args.episodes, steps=args.steps,
                                    image_size=256, image_fn=scene_fn(256))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = VLADataset(root, "libero_goal", image_size=args.image_size, image_aug=True, train=True, progress=False)
        t_index = time.perf_counter() - t0
        shard_bytes = sum(p.stat().st_size for p in (root / "libero_goal_no_noops" / "1.0.0").glob("*.tfrecord-*"))
        rng = np.random.default_rng(0)
        probe = rng.choice(len(ds), size=min(len(ds), 600), replace=False)
        sj = decode_bound(ds, probe, "simplejpeg")
        pil = decode_bound(ds, probe, "pil")
        naive = naive_rate(ds, probe[:150])
        load = os.getloadavg()[0]
        print(f"dataset: {args.episodes} episodes x {args.steps} steps, 2 x 256^2 JPEG/step, "
              f"{shard_bytes / 2**20:.1f} MiB (write {t_write:.1f} s, first index+statistics pass {t_index:.2f} s); "
              f"samples at {args.image_size}^2, augmentation on, batch {args.batch_size}, {os.cpu_count()} CPUs, load "
              f"average {load:.1f} at start")
        print("samples/CPU-s = samples per second of CPU time of the loader process tree (robust to other load);\n"
              "% of bound (CPU) compares that with the one-core JPEG decode bound; wall samples/s is what training\n"
              "sees, and wall / 1-core bound compares it with what one process does decoding only.")
        print(f"{'configuration':<58} {'wall samples/s':>14} {'samples/CPU-s':>13} {'% of bound (CPU)':>16} "
              f"{'wall / 1-core bound':>19} {'peak RSS MiB':>12} {'peak PSS MiB':>12}")
        bound = sj / 2
        print(f"{'JPEG decode bound, simplejpeg (2 images/sample)':<58} {'-':>14} {bound:>13.0f} {100:>15.0f}% "
              f"{'-':>19} {'-':>12} {'-':>12}")
        print(f"{'JPEG decode bound, PIL (2 images/sample)':<58} {'-':>14} {pil / 2:>13.0f} "
              f"{100 * pil / 2 / bound:>15.0f}% {'-':>19} {'-':>12} {'-':>12}")
        print(f"{'naive: parse whole episode per sample (bicubic)':<58} {'-':>14} {naive:>13.0f} "
              f"{100 * naive / bound:>15.0f}% {'-':>19} {'-':>12} {'-':>12}")
        configs = [(w, r, True) for r in ("bicubic", "lanczos") for w in [int(x) for x in args.workers.split(",") if x]]
        if 2 in [c[0] for c in configs]:
            configs.append((2, "bicubic", False))
        for w, resample, ring in configs:
            rate, per_cpu, rss, pss = loader_rate(ds, w, args.samples, args.batch_size, seed=0, resample=resample,
                                                  shared_ring=ring)
            name = f"{w} worker(s), {resample}{' (default)' if resample == 'bicubic' else ''}"
            if w and not ring:
                name += ", no slot ring"
            print(f"{name:<58} {rate:>14.0f} {per_cpu:>13.0f} {100 * per_cpu / bound:>15.0f}% "
                  f"{100 * rate / bound:>18.0f}% {rss:>12.0f} {pss:>12.0f}")
        import torch

        torch.set_num_threads(1)
        m = stage_costs(ds, probe, args.image_size, args.batch_size)
        print("\nCPU ms per stage (one thread; median over 20 samples of the best of 3 repeats):")
        for k, v in m.items():
            print(f"  {k:<90} {v:7.3f}")
    finally:
        if not args.out_dir:
            shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- LeRobot video rows

def write_lerobot(root: Path, episodes: int, steps: int) -> Path:
    from latentvla.data.lerobot_writer import LeRobotWriter
    from latentvla.data.synthetic import LAYOUTS, smooth_actions

    out = root / "libero_goal_no_noops"
    if (out / "meta" / "info.json").is_file():
        return out
    cams = {c: {"dtype": "video", "shape": [256, 256, 3], "names": ["height", "width", "channels"]}
            for c in ("observation.images.image", "observation.images.wrist_image")}
    feats = {**cams, "observation.state": {"dtype": "float32", "shape": [8], "names": None},
             "action": {"dtype": "float32", "shape": [7], "names": None}}
    fn = scene_fn(256)
    with LeRobotWriter(out, feats, fps=10, robot_type="panda") as w:
        for e in range(episodes):
            act = smooth_actions(e, steps, 7, LAYOUTS["libero"]["gripper"])
            frames = {c: np.stack([fn(e, t, c, act[:t]) for t in range(steps)]) for c in cams}
            w.add_episode({**frames, "observation.state": np.cumsum(np.pad(act, ((0, 0), (0, 1))), 0) * 0.05,
                           "action": act}, "put the bowl on the plate")
    return out


def video_decode_bound(idx, rows: np.ndarray, path: Path) -> float:
    """Frames/s (CPU time) decoding the cameras of the given rows in that (random) order: one thread, PyAV,
    containers kept open, seek to the preceding keyframe and decode forward to the frame."""
    import av

    conts = {}
    jobs = [(int(idx.frame_file[r, c]), int(idx.frame_pts[r, c]), int(idx.seek_pts[r, c]))
            for r in rows for c in range(idx.frame_pts.shape[1])]
    t0 = time.process_time()
    for f, pts, seek in jobs:
        if f not in conts:
            c = av.open(str(path / idx.video_files[f]))
            c.streams.video[0].codec_context.thread_count = 1
            conts[f] = c
        c = conts[f]
        s = c.streams.video[0]
        c.seek(seek, stream=s, backward=True, any_frame=False)
        for fr in c.decode(s):
            if fr.pts == pts:
                fr.to_ndarray(format="rgb24")
                break
    rate = len(jobs) / (time.process_time() - t0)
    for c in conts.values():
        c.close()
    return rate


def lerobot_reference(args) -> None:
    """Under a venv with lerobot: LeRobotDataset + DataLoader samples/s on the dataset (printed as one line)."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    torch.set_num_threads(1)
    root = Path(args.lerobot_reference)
    backend = "torchcodec"
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # no system FFmpeg for torchcodec: lerobot's PyAV backend
        backend = "pyav"
    ds = LeRobotDataset("local/bench", root=root, video_backend=backend,
                        delta_timestamps={"action": [i / 10 for i in range(8)]})
    for w in [int(x) for x in args.workers.split(",") if x]:
        dl = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=w,
                                         generator=torch.Generator().manual_seed(0))
        with PeakRSS() as mem:
            it = iter(dl)
            next(it)
            c0, t0, n = tree_cpu_seconds(), time.perf_counter(), 0
            for b in it:
                n += len(b["action"])
                if n >= args.samples:
                    break
            dt, cpu = time.perf_counter() - t0, tree_cpu_seconds() - c0
        print(f"LEROBOT {w} {n / dt:.1f} {n / cpu:.1f} {mem.peak / 2**20:.0f} {mem.peak_pss / 2**20:.0f} {backend}")


def lerobot_main(args) -> None:
    import subprocess

    from latentvla.data.dataset import VLADataset

    episodes = args.episodes or 20
    root = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="latentvla_bench_lerobot_"))
    try:
        t0 = time.perf_counter()
        path = write_lerobot(root, episodes, args.steps)
        t_write = time.perf_counter() - t0
        ds = VLADataset(root, "libero_goal", image_size=args.image_size, image_aug=bool(args.image_aug), train=True,
                        progress=False)
        size = sum(p.stat().st_size for p in path.rglob("*.mp4"))
        rows = np.random.default_rng(0).choice(len(ds), size=min(len(ds), 600), replace=False)
        bound = video_decode_bound(ds.indexes[0], rows, path) / 2
        print(f"LeRobot v3.0: {episodes} episodes x {args.steps} frames, 2 x 256^2 AV1 (GOP 2, crf 30), "
              f"{size / 2**20:.1f} MiB of mp4 (write {t_write:.1f} s); samples at {args.image_size}^2, augmentation "
              f"{'on' if args.image_aug else 'off'}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} at start")
        print(f"{'configuration':<58} {'wall samples/s':>14} {'samples/CPU-s':>13} {'% of bound (CPU)':>16} "
              f"{'wall / 1-core bound':>19} {'peak RSS MiB':>12} {'peak PSS MiB':>12}")
        print(f"{'AV1 random-access decode bound, PyAV (2 frames/sample)':<58} {'-':>14} {bound:>13.0f} "
              f"{100:>15.0f}% {'-':>19} {'-':>12} {'-':>12}")
        for w in [int(x) for x in args.workers.split(",") if x]:
            rate, per_cpu, rss, pss = loader_rate(ds, w, args.samples, args.batch_size, seed=0, resample="bicubic")
            print(f"{f'latentvla VLADataset, {w} worker(s)':<58} {rate:>14.0f} {per_cpu:>13.0f} "
                  f"{100 * per_cpu / bound:>15.0f}% {100 * rate / bound:>18.0f}% {rss:>12.0f} {pss:>12.0f}")
        if args.lerobot_python:
            out = subprocess.run([args.lerobot_python, __file__, "--lerobot_reference", str(path), "--workers",
                                  args.workers, "--samples", str(args.samples), "--batch_size", str(args.batch_size)],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            lines = [x.split() for x in out.stdout.splitlines() if x.startswith("LEROBOT ")]
            if not lines:
                print(f"lerobot reference failed:\n{out.stderr[-2000:]}")
            for _, w, rate, per_cpu, rss, pss, backend in lines:
                name = f"lerobot LeRobotDataset ({backend}), {w} worker(s)"
                print(f"{name:<58} {float(rate):>14.0f} {float(per_cpu):>13.0f} "
                      f"{100 * float(per_cpu) / bound:>15.0f}% {100 * float(rate) / bound:>18.0f}% {rss:>12} {pss:>12}")
    finally:
        if not args.out_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
