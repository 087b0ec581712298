"""`latentvla lam action-train`: train the VQ action-chunk tokenizer on the action chunks of a data mix.

Data flow: `ActionChunkDataset` (normalized action chunks of the platform's length, no image
decoding) -> `GlobalSampler` (seeded, resumable) -> stacked [B, P, D] -> `ActionTokenizerModel`.

Outputs in `--results_dir`: `tokenizer_step_{N}.pt` (every `--save_every` steps and at the end,
atomically), `config.json` (train config), `dataset_statistics.json`, `metrics.jsonl` (one line per
`--log_every` steps: losses, reconstruction MSE/L1 normalized and in robot units, code usage,
perplexity, restarted codes, samples/s) and `report.json` (final metrics over `--eval_batches`
fixed-seed batches, plus the first and last logged values).
`--resume` continues from the newest checkpoint (weights, optimizer, RNG, data position).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvla.config import config_to_dict
from latentvla.errors import LatentVLAError
from latentvla.lam.action_tokenizer import ActionTokenizerModel, check_platform, code_usage_stats
from latentvla.lam.action_tokenizer_checkpoint import (
    checkpoint_name,
    list_checkpoints,
    load_tokenizer_checkpoint,
    save_tokenizer_checkpoint,
)
from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig, ActionTrainConfig
from latentvla.robots import Platform, unnormalize
from latentvla.utils.atomic import atomic_write_json, atomic_write_text, remove_stale_temps
from latentvla.utils.paths import check_writable_dir
from latentvla.utils.seeding import seed_everything

_LATENT_BUFFER = 4096  # recent encoder outputs kept to restart dead codes from


# ----------------------------------------------------------------------------- data

def open_action_data(cfg: ActionTrainConfig):
    from latentvla.data.dataset import ActionChunkDataset

    ds = ActionChunkDataset(cfg.data_root_dir, cfg.data_mix, seed=cfg.seed, split=cfg.split,
                            dataset_registry=cfg.dataset_registry)
    if len(ds) == 0:
        raise LatentVLAError(f"--data_mix {cfg.data_mix}: the dataset has no transitions in split {cfg.split!r}")
    return ds


def collate_chunks(samples: Sequence[dict]) -> dict[str, Any]:
    return {"actions": torch.from_numpy(np.stack([np.asarray(s["actions"], np.float32) for s in samples])),
            "dataset_name": [s.get("dataset_name") for s in samples]}


class ChunkStream:
    """Endless batches over epochs of a `GlobalSampler`; position = samples consumed (resumable)."""

    def __init__(self, dataset, seed: int, batch_size: int, num_workers: int = 0, consumed: int = 0):
        from latentvla.data.sampler import GlobalSampler

        self.dataset, self.seed, self.batch_size, self.num_workers = dataset, seed, batch_size, num_workers
        self.sampler = GlobalSampler(dataset, seed=seed)
        self.epoch_len = len(self.sampler)
        self.consumed = consumed

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        while True:
            epoch, skip = divmod(self.consumed, self.epoch_len)
            self.sampler.set_epoch(epoch)
            order = list(iter(self.sampler))[skip:]
            # Whole batches only; a short tail is dropped and the next epoch starts.
            n = len(order) // self.batch_size * self.batch_size
            if n == 0:
                self.consumed = (epoch + 1) * self.epoch_len
                if self.epoch_len < self.batch_size:
                    raise LatentVLAError(f"the data mix has {self.epoch_len} transitions, fewer than --batch_size "
                                         f"{self.batch_size}")
                continue
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order[:n],
                                num_workers=self.num_workers,
                                collate_fn=collate_chunks, drop_last=True, persistent_workers=False)
            for batch in loader:
                self.consumed += self.batch_size
                yield batch
            self.consumed = (epoch + 1) * self.epoch_len


def fixed_batches(dataset, seed: int, batch_size: int, count: int) -> list[dict]:
    """`count` batches of random transitions drawn with `seed` (codebook init, final report)."""
    rng = np.random.default_rng(seed)
    n = min(len(dataset), batch_size * count)
    idx = rng.choice(len(dataset), size=n, replace=False)
    return [collate_chunks([dataset[int(i)] for i in idx[s:s + batch_size]]) for s in range(0, n, batch_size)]


def check_batch(actions: torch.Tensor, platform: Platform, data_mix: str) -> None:
    if tuple(actions.shape[1:]) != (platform.chunk_len, platform.action_dim):
        raise LatentVLAError(f"--data_mix {data_mix}: action chunks are {tuple(actions.shape[1:])}, expected "
                             f"(chunk_len, action_dim) = ({platform.chunk_len}, {platform.action_dim}) of platform "
                             f"{platform.name!r}")
    if not torch.isfinite(actions).all():
        raise LatentVLAError(f"--data_mix {data_mix}: NaN/inf in normalized actions")


# ----------------------------------------------------------------------------- metrics

class RobotUnits:
    """Unnormalizes chunks with the statistics of the dataset each sample came from."""

    def __init__(self, statistics: dict, platform: Platform):
        self.statistics, self.platform = statistics, platform
        self.single = next(iter(statistics.values())) if len(statistics) == 1 else None

    def __call__(self, x: np.ndarray, names: Sequence[str | None]) -> np.ndarray | None:
        out = np.empty_like(x)
        for i, name in enumerate(names):
            stats = self.statistics.get(name) if name is not None else self.single
            if stats is None:
                return None
            out[i] = unnormalize(x[i], stats["action"], self.platform.action_norm_mask, self.platform.normalization)
        return out


def reconstruction_metrics(recon: torch.Tensor, actions: torch.Tensor, names, robot: RobotUnits) -> dict[str, float]:
    diff = (recon.detach().float() - actions).cpu()
    m = {"rec_mse": float(diff.pow(2).mean()), "rec_l1": float(diff.abs().mean())}
    r = robot(recon.detach().float().cpu().numpy(), names)
    a = robot(actions.cpu().numpy(), names)
    if r is not None and a is not None:
        m["rec_mse_robot"] = float(np.mean((r - a) ** 2))
        m["rec_l1_robot"] = float(np.mean(np.abs(r - a)))
    return m


class MetricWindow:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0
        self.codes: list[torch.Tensor] = []

    def add(self, values: dict[str, float], codes: torch.Tensor) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        self.codes.append(codes.detach().reshape(-1).cpu())

    def summary(self, codebook_size: int) -> dict[str, float]:
        out = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        usage = code_usage_stats(torch.cat(self.codes), codebook_size) if self.codes else (0.0, 0.0)
        out["code_usage"], out["perplexity"] = usage
        return out


@torch.no_grad()
def evaluate(model: ActionTokenizerModel, batches: list[dict], device, robot: RobotUnits) -> dict[str, float]:
    """Deterministic metrics (eval mode, quantized path only) over fixed batches."""
    was = model.training
    model.eval()
    window = MetricWindow()
    for b in batches:
        x = b["actions"].to(device)
        codes = model.vq.nearest(model.encoder(x))
        recon = model.decoder(model.vq.lookup(codes))
        window.add(reconstruction_metrics(recon, x, b["dataset_name"], robot), codes)
    model.train(was)
    return window.summary(model.config.codebook_size)


# ----------------------------------------------------------------------------- checkpoints

def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LatentVLAError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LatentVLAError(f"--device {name}: CUDA is not available on this machine")
    return dev


def _prune(results_dir: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for _, p in list_checkpoints(results_dir)[:-keep_last]:
        p.unlink(missing_ok=True)


class _JSONLLog:
    """metrics.jsonl; on resume, lines written after the resumed checkpoint are dropped first."""

    def __init__(self, path: Path, resume_step: int | None):
        keep = []
        if resume_step is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
        atomic_write_text(path, "".join(line + "\n" for line in keep))
        self._f = open(path, "a", buffering=1)

    def log(self, step: int, metrics: dict) -> None:
        self._f.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        self._f.close()


def open_logger(cfg: ActionTrainConfig, results: Path, resume_step: int | None):
    """The shared training logger (JSONL + optional W&B / SwanLab) when present, else JSONL only."""
    try:
        from latentvla.train.loggers import build_loggers
    except ImportError:
        build_loggers = None
    if build_loggers is None:
        if cfg.use_wandb:
            raise LatentVLAError("--use_wandb needs latentvla.train.loggers, which is not available")
        return _JSONLLog(results / "metrics.jsonl", resume_step)
    return build_loggers(results, resume_step=resume_step, run_name=cfg.run_name or results.name,
                         config=config_to_dict(cfg), use_wandb=cfg.use_wandb, wandb_project=cfg.wandb_project)


# ----------------------------------------------------------------------------- training

def train_action_tokenizer(cfg: ActionTrainConfig) -> dict[str, Any]:
    """Run `latentvla lam action-train`; returns the final report (also written to report.json)."""
    from tqdm import tqdm

    seed_everything(cfg.seed)
    device = _resolve_device(cfg.device)
    results = Path(cfg.results_dir)
    check_writable_dir(results, "--results_dir")  # before the data is read
    for line in remove_stale_temps(results).describe():  # what a killed run's writers left
        print(line)
    existing = list_checkpoints(results)
    if existing and not cfg.resume:
        raise LatentVLAError(f"--results_dir {results} already holds {existing[-1][1].name}; pass --resume to continue "
                             f"or choose another directory")

    dataset = open_action_data(cfg)
    platform: Platform = dataset.platform
    statistics: dict = dataset.statistics
    robot = RobotUnits(statistics, platform)

    start_step, extra = 0, {}
    if cfg.resume and existing:
        loaded = load_tokenizer_checkpoint(existing[-1][1])
        check_platform(loaded.model.config, loaded.platform, platform, str(existing[-1][1]),
                       f"--data_mix {cfg.data_mix}")
        model, start_step, extra = loaded.model, loaded.step, loaded.extra
        print(f"resuming from {existing[-1][1]} (step {start_step})")
    elif cfg.init_checkpoint:
        loaded = load_tokenizer_checkpoint(cfg.init_checkpoint)
        check_platform(loaded.model.config, loaded.platform, platform, cfg.init_checkpoint,
                       f"--data_mix {cfg.data_mix}")
        model = loaded.model
        model.config.chunk_len = platform.chunk_len
    else:
        if cfg.resume:
            print(f"--resume: no checkpoint in {results}; starting from scratch")
        model = ActionTokenizerModel(ActionTokenizerConfig(action_dim=platform.action_dim, chunk_len=platform.chunk_len,
                                                           hidden_dim=cfg.hidden_dim, codebook_size=cfg.codebook_size,
                                                           ema_decay=cfg.ema_decay))
    model.vq.decay = cfg.ema_decay
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed)  # masking and code restarts
    consumed = 0
    if extra:
        if "optimizer" in extra:
            opt.load_state_dict(extra["optimizer"])
        trainer_state = extra.get("trainer", {})
        consumed = int(trainer_state.get("consumed", 0))
        if "generator" in trainer_state:
            gen.set_state(trainer_state["generator"])
        if "torch_rng" in trainer_state:
            torch.set_rng_state(trainer_state["torch_rng"])

    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / "config.json", {**config_to_dict(cfg), "platform": platform.to_dict()})
    atomic_write_json(results / "dataset_statistics.json", statistics)
    log_path = results / "metrics.jsonl"
    logger = open_logger(cfg, results, start_step if cfg.resume else None)

    if start_step == 0 and not cfg.init_checkpoint and cfg.init_batches > 0:
        init = fixed_batches(dataset, cfg.seed + 1, cfg.batch_size, cfg.init_batches)
        with torch.no_grad():
            z = torch.cat([model.encoder(b["actions"].to(device)) for b in init])
        model.vq.init_from_data(z, generator=gen)

    chunk_stream = ChunkStream(dataset, cfg.seed, cfg.batch_size, cfg.num_workers, consumed=consumed)
    stream = iter(chunk_stream)
    recent: deque[torch.Tensor] = deque(maxlen=max(1, _LATENT_BUFFER // (cfg.batch_size * platform.chunk_len)))
    window, restarted, logged = MetricWindow(), 0, []
    t_window = time.perf_counter()
    t_start = time.perf_counter()
    bar = tqdm(total=cfg.num_steps, initial=start_step, desc="action-train", dynamic_ncols=True)
    step = start_step

    def save(step_now: int) -> Path:
        state = {"consumed": chunk_stream.consumed, "generator": gen.get_state(), "torch_rng": torch.get_rng_state()}
        path = save_tokenizer_checkpoint(results / checkpoint_name(step_now), model, step=step_now,
                                         statistics=statistics, platform=platform.to_dict(),
                                         extra={"optimizer": opt.state_dict(), "trainer": state,
                                                "train_config": config_to_dict(cfg)})
        _prune(results, cfg.keep_last)
        return path

    last_saved = None
    try:
        while step < cfg.num_steps:
            batch = next(stream)
            x = batch["actions"].to(device, non_blocking=True)
            if step == start_step:
                check_batch(x, platform, cfg.data_mix)
            out = model(x, mask_ratio=cfg.mask_ratio, commitment_weight=cfg.commitment_weight,
                        mask_loss_weight=cfg.mask_loss_weight, generator=gen)
            if not torch.isfinite(out["loss"]):
                raise LatentVLAError(f"step {step + 1}: the loss is {float(out['loss'])} (NaN/inf "
                                     f"actions in --data_mix {cfg.data_mix}, or training diverged: lower "
                                     "--learning_rate)")
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            recent.append(out["latents"].detach().reshape(-1, model.config.hidden_dim))
            vals = {"loss": float(out["loss"].detach()), "mask_loss": float(out["mask_loss"]),
                    "commitment": float(out["commitment"])}
            vals.update(reconstruction_metrics(out["recon"], x, batch["dataset_name"], robot))
            window.add(vals, out["codes"])
            if cfg.restart_every and step % cfg.restart_every == 0:
                restarted += model.vq.restart_dead_codes(torch.cat(list(recent)), generator=gen)
                recent.clear()  # the pool, like the usage window, covers the steps since the last restart
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.num_steps:
                now = time.perf_counter()
                rec = {"step": step, **window.summary(model.config.codebook_size), "restarted_codes": restarted,
                       "lr": cfg.learning_rate, "samples_per_s": window.n * cfg.batch_size / max(now - t_window, 1e-9)}
                logged.append(rec)
                logger.log(step, {k: v for k, v in rec.items() if k != "step"})
                bar.set_postfix(rec_mse=f"{rec['rec_mse']:.4f}", usage=f"{rec['code_usage']:.2f}",
                                ppl=f"{rec['perplexity']:.1f}")
                window, restarted, t_window = MetricWindow(), 0, now
            if step % cfg.save_every == 0 or step == cfg.num_steps:
                last_saved = save(step)
    finally:
        bar.close()
        logger.close()

    if last_saved is None:  # num_steps already reached by the resumed checkpoint
        last_saved = existing[-1][1] if existing else save(step)
    final = evaluate(model, fixed_batches(dataset, cfg.seed + 2, cfg.batch_size, max(cfg.eval_batches, 1)), device,
                     robot)
    first = _first_logged(log_path)
    report = {
        "checkpoint": str(last_saved), "step": step, "platform": platform.name, "data_mix": cfg.data_mix,
        "datasets": sorted(statistics), "codebook_size": model.config.codebook_size,
        "chunk_len": platform.chunk_len, "action_dim": platform.action_dim, "final": final,
        "first_logged": first, "last_logged": logged[-1] if logged else None,
        "train_seconds": time.perf_counter() - t_start,
    }
    atomic_write_json(results / "report.json", report)
    print(json.dumps({"checkpoint": report["checkpoint"], **{k: round(v, 6) for k, v in final.items()}}))
    return report


def _first_logged(path: Path) -> dict | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def run_action_train(cfg: ActionTrainConfig) -> int:
    train_action_tokenizer(cfg)
    return 0
