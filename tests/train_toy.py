"""Toy model + dataset + sampler for the generic trainer tests (also a torchrun entry point).

The model follows the trainer's contract `model(batch) -> {"loss", "metrics"}`; the sampler
takes a disjoint strided slice of one seeded permutation per rank, as the real GlobalSampler.

    torchrun --nproc_per_node 2 tests/train_toy.py OUT_DIR STRATEGY GLOBAL_BATCH PER_DEVICE MAX_STEPS
             [MAX_GRAD_NORM [CRASH_AT|resume]]

CRASH_AT = k: raise after step k (a crash); "resume": continue from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ToyDataset:
    def __init__(self, n: int = 96, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, 6)).astype(np.float32)
        w = rng.normal(size=(6, 3)).astype(np.float32)
        self.y = (np.tanh(self.x @ w) + 0.1 * rng.normal(size=(n, 3))).astype(np.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": torch.from_numpy(self.x[i]), "y": torch.from_numpy(self.y[i])}


class ToySampler:
    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, e: int):
        self.epoch = e

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter(perm[self.rank::self.world].tolist())

    def __len__(self):
        return len(range(self.rank, self.n, self.world))


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 32), nn.GELU())
        self.out = nn.Linear(32, 3)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)

    def forward(self, batch):
        pred = self.out(self.body(self.frozen(batch["x"]) + batch["x"]))
        l1 = (pred - batch["y"]).abs().mean()
        return {"loss": ((pred - batch["y"]) ** 2).mean(), "metrics": {"l1": l1.detach()}}


def main(argv):
    from latentvla.train import distributed as D
    from latentvla.train.loggers import JSONLLogger
    from latentvla.train.trainer import LoopSettings, Trainer

    out, strategy, global_bs, per_dev, steps = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    max_norm = float(argv[5]) if len(argv) > 5 else 1.0
    mode = argv[6] if len(argv) > 6 else ""
    torch.set_num_threads(1)
    info = D.setup_distributed("cpu")
    torch.manual_seed(0)
    model = ToyModel()
    ds = ToyDataset()
    sampler = ToySampler(len(ds), seed=3, rank=info.rank, world_size=info.world_size)
    s = LoopSettings(per_device_batch_size=per_dev, accumulation_steps=global_bs // (per_dev * info.world_size),
                     max_steps=steps, learning_rate=0.05, max_grad_norm=max_norm, strategy=strategy,
                     lr_scheduler_type="linear-warmup+cosine-decay", warmup_ratio=0.2, save_step=2, progress=False)
    from latentvla.train.checkpointing import CheckpointManager

    resume = CheckpointManager(Path(out) / "checkpoints").latest() if mode == "resume" else None
    resume_step = int(resume.name.split("_")[-1]) if resume else None
    logger = JSONLLogger(Path(out) / "metrics.jsonl", resume_step=resume_step) if info.is_main else None

    def crash(step, rec):
        if mode.isdigit() and step == int(mode):
            raise RuntimeError(f"simulated crash after step {step}")

    tr = Trainer(model, ds, sampler, s, info=info, run_dir=out, logger=logger, callbacks=[crash], resume_from=resume)
    applied = []  # global norm of the gradient the optimizer actually applies (after clipping)

    def record(opt, args, kwargs):
        n = torch.nn.utils.get_total_norm([p.grad for p in tr.params if p.grad is not None])
        applied.append(float(n.full_tensor() if hasattr(n, "full_tensor") else n))

    tr.optimizer.register_step_pre_hook(record)
    tr.fit()
    weights = tr.trainable_state()
    if info.is_main:
        logger.close()
        torch.save(weights, Path(out) / "final_weights.pt")
        (Path(out) / "applied_norms.json").write_text(json.dumps(applied))
    D.barrier()  # as `latentvla train` does: no rank destroys the group while another still uses it
    D.teardown_distributed()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(sys.argv[1:])
