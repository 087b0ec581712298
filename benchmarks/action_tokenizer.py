"""Throughput of the VQ action-chunk tokenizer (paper sizes: hidden 128, 256 codes, 2 layers).

    python benchmarks/action_tokenizer.py [--platform libero] [--device cpu] [--threads N] [--seconds 2]

Prints chunks/s for encode (normalized chunk -> P codes) and decode (codes -> chunk) per batch size,
using a randomly initialised model built through the same config as trained checkpoints
(throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from latentvla.lam.action_tokenizer import ActionChunkTokenizer, ActionTokenizerModel
from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig
from latentvla.robots import get_platform


def _rate(fn, batch: int, seconds: float, sync) -> float:
    fn()  # warm-up
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync()
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--platform", default="libero")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--batch_sizes", default="1,8,64,256")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plat = get_platform(args.platform)
    torch.manual_seed(0)
    tok = ActionChunkTokenizer(ActionTokenizerModel(ActionTokenizerConfig(action_dim=plat.action_dim,
                                                                          chunk_len=plat.chunk_len)))
    tok.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"platform {plat.name}: chunk {plat.chunk_len} x {plat.action_dim}, device {args.device}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"{'batch':>6} {'encode chunks/s':>16} {'decode chunks/s':>16}")
    for b in (int(x) for x in args.batch_sizes.split(",")):
        x = (torch.rand(b, plat.chunk_len, plat.action_dim) * 2 - 1).to(args.device)
        codes = tok.encode(x)
        enc = _rate(lambda x=x: tok.encode(x), b, args.seconds, sync)
        dec = _rate(lambda codes=codes: tok.decode(codes), b, args.seconds, sync)
        print(f"{b:>6} {enc:>16,.0f} {dec:>16,.0f}")


if __name__ == "__main__":
    main()
