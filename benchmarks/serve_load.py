"""Policy-server load: C concurrent loopback clients x N requests each against `latentvla serve`.

    python benchmarks/serve_load.py                          # 100 clients x 10 requests, batches of up to 8
    python benchmarks/serve_load.py --compare                # --max_batch_size 1 (one at a time) vs 8
    python benchmarks/serve_load.py --hog_chars 64000        # plus one client sending 64k-character instructions
    python benchmarks/serve_load.py --connect 127.0.0.1:8000 # a server that is already running (loopback only)

Without --checkpoint it writes a tiny random Qwen3-VL + baseline checkpoint (LIBERO platform, 64²
training images, proprio) to a temporary directory and serves it on the CPU with
`latentvla serve --device cpu --port 0` in a subprocess (`--server_threads` torch threads). Every
client opens its own websocket, then sends LIBERO-shaped requests (two 224² uint8 frames, an
instruction, 8-dim proprio) one after another, each as soon as the previous answer arrived (closed
loop). Printed: latency p50 / p90 / p99 / max over all requests, throughput, the mean batch the
server ran (its `server_timing.batch_size`) and the model's time per answered request
(`server_timing.infer_ms` / batch size; the rest of a request's latency is queueing and transport).
Bounded: `--requests` per client and `--time_limit` seconds per configuration; all traffic goes to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from latentvla.serve.protocol import packb, unpackb

INSTRUCTIONS = ["put the bowl on the plate", "open the top drawer and put the bowl inside",
                "push the plate to the front of the stove", "turn on the stove",
                "put the wine bottle on top of the cabinet"]


def build_checkpoint(root: Path) -> Path:
    import torch

    from latentvla.data.dataset import VLADataset
    from latentvla.data.synthetic import write_synthetic_dataset
    from latentvla.robots import get_platform
    from latentvla.vla.checkpoint import save_policy_checkpoint
    from latentvla.vla.configuration_tiny import TinyVLMConfig
    from latentvla.vla.configuration_vla import VLAConfig
    from latentvla.vla.modeling_vla import LatentVLA
    from latentvla.vla.tiny import write_tiny_vlm

    write_tiny_vlm(TinyVLMConfig(out_dir=str(root / "vlm")))
    write_synthetic_dataset(root / "data", "libero_goal_no_noops", num_episodes=1, steps=[4], image_size=64)
    stats = VLADataset(root / "data", "libero_goal", image_size=64, image_aug=False, progress=False).statistics
    torch.manual_seed(0)
    model = LatentVLA.from_config(VLAConfig(vla_id="baseline", vlm_path=str(root / "vlm"), default_image_size=64),
                                  get_platform("libero"), device="cpu")
    return save_policy_checkpoint(root / "ckpt" / "step_0", model, {"max_steps": 0, "vla_id": "baseline",
                                                                     "image_resample": "bicubic"}, stats)


def start_server(checkpoint: Path, args, max_batch_size: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.server_threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "latentvla.cli", "serve", "--pretrained_checkpoint", str(checkpoint), "--device",
           "cpu", "--host", "127.0.0.1", "--port", "0", "--max_batch_size", str(max_batch_size),
           "--batch_wait_ms", str(args.batch_wait_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline, line = time.time() + 120, ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "listening on ws://" in line or not line:
            break
    if "listening on ws://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    port = int(line.split("ws://127.0.0.1:")[1].split()[0])
    # keep draining its output so a chatty server never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, port


def _connect_kwargs():
    from websockets.asyncio.client import connect

    return connect, ({"proxy": None} if "proxy" in inspect.signature(connect).parameters else {})


async def one_client(port: int, payload: bytes, n: int, latencies: list, batches: list, errors: list,
                     stop: asyncio.Event) -> None:
    connect, extra = _connect_kwargs()
    async with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=2**26, open_timeout=60, **extra) as ws:
        unpackb(await ws.recv())  # metadata
        for _ in range(n):
            if stop.is_set():
                return
            t0 = time.perf_counter()
            await ws.send(payload)
            reply = unpackb(await ws.recv())
            latencies.append(time.perf_counter() - t0)
            if reply.get("ok"):
                timing = reply.get("server_timing", {})
                batches.append((timing.get("batch_size", 1), timing.get("infer_ms", float("nan"))))
            else:
                errors.append(reply.get("error"))


async def hog_client(port: int, chars: int, stop: asyncio.Event, result: dict) -> None:
    """One client that keeps sending `chars`-character instructions until the others are done."""
    connect, extra = _connect_kwargs()
    payload = packb({"images": [np.zeros((224, 224, 3), np.uint8)] * 2,
                     "instruction": ("pick up the bowl " * chars)[:chars], "proprio": np.zeros(8, np.float32)})
    async with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=2**26, open_timeout=60, **extra) as ws:
        unpackb(await ws.recv())
        while not stop.is_set():
            t0 = time.perf_counter()
            await ws.send(payload)
            reply = unpackb(await ws.recv())
            result.setdefault("latency", []).append(time.perf_counter() - t0)
            result["last"] = "ok" if reply.get("ok") else reply.get("error")


async def load(port: int, args) -> dict:
    rng = np.random.default_rng(0)
    payloads = [packb({"images": [rng.integers(0, 256, (args.image_side, args.image_side, 3), dtype=np.uint8)
                                  for _ in range(2)],
                       "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
                       "proprio": rng.uniform(-1, 1, 8).astype(np.float32)}) for i in range(args.clients)]
    warm: list = []
    await one_client(port, payloads[0], 3, warm, [], [], asyncio.Event())  # first calls initialise lazily
    latencies, batches, errors, hog = [], [], [], {}
    stop = asyncio.Event()
    hog_task = asyncio.create_task(hog_client(port, args.hog_chars, stop, hog)) if args.hog_chars else None
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one_client(port, payloads[i], args.requests, latencies, batches, errors, stop))
             for i in range(args.clients)]
    done, pending = await asyncio.wait(tasks, timeout=args.time_limit)
    wall = time.perf_counter() - t0
    stop.set()
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    failed = [t.exception() for t in done if t.exception() is not None]
    if hog_task is not None:
        try:
            await asyncio.wait_for(hog_task, timeout=args.time_limit)
        except (asyncio.TimeoutError, Exception) as e:  # a hog stuck behind its own request
            hog.setdefault("last", f"stopped waiting ({type(e).__name__})")
    return {"latencies": latencies, "batches": batches, "errors": errors, "wall": wall, "timed_out": bool(pending),
            "failed": failed, "hog": hog}


def report(name: str, r: dict) -> str:
    lat = np.asarray(r["latencies"]) * 1000.0
    if lat.size == 0:
        return f"{name}: no answers (failed clients: {r['failed'][:3]})"
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    b = np.asarray(r["batches"], dtype=np.float64).reshape(-1, 2)
    mean_batch = b[:, 0].mean() if b.size else float("nan")
    model_ms = (b[:, 1] / b[:, 0]).mean() if b.size else float("nan")  # the model's time per answered request
    line = (f"{name} | {lat.size} | {p50:.0f} | {p90:.0f} | {p99:.0f} | {lat.max():.0f} | {lat.size / r['wall']:.1f} | "
            f"{mean_batch:.2f} | {model_ms:.1f}")
    notes = []
    if r["errors"]:
        notes.append(f"{len(r['errors'])} error replies, e.g. {r['errors'][0]!r}")
    if r["timed_out"]:
        notes.append("hit --time_limit")
    if r["failed"]:
        notes.append(f"{len(r['failed'])} clients failed: {r['failed'][0]!r}")
    if r["hog"]:
        hl = np.asarray(r["hog"].get("latency", [])) * 1000.0
        notes.append(f"hog: {hl.size} requests, median {np.median(hl) if hl.size else float('nan'):.0f} ms, "
                     f"last reply {str(r['hog'].get('last'))[:90]!r}")
    return line + ("\n    " + "; ".join(notes) if notes else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    ap.add_argument("--max_batch_size", type=int, default=8)
    ap.add_argument("--batch_wait_ms", type=float, default=2.0)
    ap.add_argument("--compare", action="store_true", help="run --max_batch_size 1, then --max_batch_size")
    ap.add_argument("--hog_chars", type=int, default=0, help="add one client sending instructions of this "
                                                             "many characters")
    ap.add_argument("--image_side", type=int, default=224)
    ap.add_argument("--server_threads", type=int, default=1, help="torch threads of the served model (OMP_NUM_THREADS)")
    ap.add_argument("--checkpoint", default=None, help="a policy checkpoint dir (default: a tiny random one)")
    ap.add_argument("--connect", default=None, help="127.0.0.1:PORT of a running server instead of starting one")
    ap.add_argument("--time_limit", type=float, default=300.0, help="seconds per configuration")
    args = ap.parse_args()
    if not 1 <= args.clients <= 1000 or not 1 <= args.requests <= 10000:
        raise SystemExit("--clients must be in 1..1000 and --requests in 1..10000")
    header = ("config | requests | p50 ms | p90 ms | p99 ms | max ms | req/s | mean batch | model ms/request\n"
              "--- | --- | --- | --- | --- | --- | --- | --- | ---")
    print(f"{args.clients} clients x {args.requests} requests, 2 x {args.image_side}² frames each; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.connect:
        host, port = args.connect.rsplit(":", 1)
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit("--connect: loopback servers only (127.0.0.1:PORT)")
        print(header)
        print(report(f"running server {args.connect}", asyncio.run(load(int(port), args))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else build_checkpoint(Path(tmp))
        sizes = [1, args.max_batch_size] if args.compare else [args.max_batch_size]
        lines = []
        for size in sizes:
            proc, port = start_server(checkpoint, args, size)
            try:
                lines.append(report(f"--max_batch_size {size}", asyncio.run(load(port, args))))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            print(lines[-1], flush=True)
        print(header)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
