"""`latentvla demo`: the whole study end to end on Meta-World, resumable stage by stage.

Stages (each leaves a done-marker `<output_dir>/stages/<stage>.json`; a finished stage is skipped
on the next run, an unfinished one resumes from what its command left behind):

  data              scripted-expert demos -> RLDS `data/metaworld_demo/1.0.0`
  models            tiny random Qwen3-VL (`latentvla tiny-vlm`)
  action_tokenizer  `latentvla lam action-train`                       (la_tok)
  image_lam         tiny random DINOv2 (`latentvla tiny-dino`) + `latentvla lam image-train`
                    (stage 2, from scratch)                             (la_align, la_direct, la_cond)
  annotate          `latentvla lam annotate` -> `data/metaworld_demo_latent/1.0.0`
  train:<variant>   `latentvla train --vla_id <variant> ...` (the paper's flags)
  evaluate:reference  random policy and scripted expert on the held-out seeds
  evaluate:<variant>  the trained policy, closed loop (`VLAPolicy`)
  report            table, results.json, bar plot PNG (rollout MP4s are under eval/<variant>/videos);
                    every success rate with its Wilson 95% interval

`--seeds N` (N > 1): the whole pipeline once per seed (--seed, --seed+1, ...) in
`<output_dir>/seed_<s>/`, each a resumable run as above, then `<output_dir>/results.json|md` and
`success_rates.png` with each policy's mean success and a 95% t-interval across seeds
(`latentvla.demo.report.write_seeds_report`).

Every other helper's work is called through its registered CLI command (`latentvla.cli.COMMANDS`)
with the same flags a user would type; the exact command lines are appended to `commands.sh`.
A command that is not available yet fails the stage with a message naming it.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentvla.config import config_to_dict
from latentvla.demo.configuration_demo import STAGES, DemoConfig, DemoSizes
from latentvla.errors import LatentVLAError
from latentvla.eval.metaworld_eval import evaluate_metaworld
from latentvla.eval.policies import PolicySpec
from latentvla.utils.atomic import atomic_write_json
from latentvla.vla.configuration_vla import strategy_class

DATA_NAME = "metaworld_demo"
# Settings whose change makes earlier results invalid (compared with the run's demo_config.json).
_FINGERPRINT_KEYS = ("scale", "tasks", "demos_per_task", "image_size", "max_episode_steps", "eval_episodes_per_task",
                     "tokenizer_steps", "lam_steps", "lam_pair_offset", "train_steps", "batch_size", "learning_rate",
                     "vlm_hidden_size", "vlm_num_layers", "lora_rank", "vlm_path", "action_noise", "seed")


class DemoPaths:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data_root = self.root / "data"
        self.dataset = self.data_root / DATA_NAME / "1.0.0"
        self.latent_dataset = self.data_root / f"{DATA_NAME}_latent" / "1.0.0"
        self.vlm = self.root / "models" / "tiny_vlm"
        self.dino = self.root / "models" / "tiny_dino"
        self.tokenizer = self.root / "lam" / "action_tokenizer"
        self.image_lam = self.root / "lam" / "image_lam"
        self.runs = self.root / "runs"
        self.eval = self.root / "eval"
        self.stages = self.root / "stages"
        self.commands = self.root / "commands.sh"
        self.config = self.root / "demo_config.json"

    def stage_outputs(self, group: str) -> list[Path]:
        """What `--restart_from <group>` removes before the stage runs again."""
        return {
            "data": [self.dataset.parent],
            "models": [self.root / "models"],
            "action_tokenizer": [self.tokenizer],
            "image_lam": [self.image_lam, self.dino],
            "annotate": [self.latent_dataset.parent],
            "train": [self.runs],
            "evaluate": [self.eval],
            "report": [self.root / "results.json", self.root / "results.md", self.root / "success_rates.png"],
        }[group]


# ----------------------------------------------------------------------------- calling other commands

def call_command(path: str, argv: list[str], *, stage: str, log: Path | None = None) -> Any:
    """Run `latentvla <path> argv...` in this process; a missing command is a clear error."""
    from latentvla import cli
    from latentvla.config import parse_config

    line = "latentvla " + path + " " + " ".join(shlex.quote(a) for a in argv)
    print(f"$ {line}", flush=True)
    if log is not None:
        with open(log, "a") as f:
            f.write(line + "\n")
    cmd = cli.COMMANDS.get(path)
    if cmd is None:
        raise LatentVLAError(f"demo stage {stage!r} needs `latentvla {path}`, which this installation does not provide "
                             f"(not registered in latentvla/cli.py)")
    try:
        cfg_cls, run = cli._load(cmd.config), cli._load(cmd.run)
    except (ImportError, AttributeError) as e:
        raise LatentVLAError(f"demo stage {stage!r}: `latentvla {path}` cannot be loaded ({e})") from None
    try:
        cfg = parse_config(cfg_cls, argv, prog=f"latentvla {path}")
    except SystemExit as e:  # argparse rejected a flag: the demo and the command disagree
        raise LatentVLAError(f"demo stage {stage!r}: `latentvla {path}` rejected the demo's options (exit {e.code}); "
                             f"command line: {line}") from None
    result = run(cfg)
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        raise LatentVLAError(f"demo stage {stage!r}: `latentvla {path}` exited with status {result}")
    return result


def latest_checkpoint(run_dir: Path, what: str) -> Path:
    """`<run_dir>/checkpoints/<latest>` (pointer file or the highest step_N)."""
    ckpts = run_dir / "checkpoints"
    pointer = ckpts / "latest"
    target = ckpts / pointer.read_text().strip() if pointer.is_file() else pointer
    if target.is_dir():
        return target
    steps = sorted((int(p.name.split("_")[-1]), p) for p in ckpts.glob("step_*") if p.name.split("_")[-1].isdigit())
    if not steps:
        raise LatentVLAError(f"{what}: no checkpoint under {ckpts}")
    return steps[-1][1]


def latest_tokenizer(results_dir: Path) -> Path:
    from latentvla.lam.action_tokenizer_checkpoint import list_checkpoints

    found = list_checkpoints(results_dir)
    if not found:
        raise LatentVLAError(f"action tokenizer: no tokenizer_step_N.pt in {results_dir}")
    return found[-1][1]


# ----------------------------------------------------------------------------- stages

class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.sizes: DemoSizes = cfg.resolved()
        self.paths = DemoPaths(cfg.output_dir)
        self.variants = list(dict.fromkeys(cfg.variants))

    # --- bookkeeping
    def stage_names(self) -> list[str]:
        names = ["data", "models"]
        if any(strategy_class(v).helper_option == "action_tokenizer_ckpt" for v in self.variants):
            names.append("action_tokenizer")
        if any(strategy_class(v).required_sample_keys for v in self.variants):  # the labels `lam annotate` writes
            names += ["image_lam", "annotate"]
        names += [f"train:{v}" for v in self.variants]
        names += ["evaluate:reference"] + [f"evaluate:{v}" for v in self.variants]
        names.append("report")
        return names

    def marker(self, stage: str) -> Path:
        return self.paths.stages / f"{stage.replace(':', '__')}.json"

    def done(self, stage: str) -> dict | None:
        p = self.marker(stage)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def sizes_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.sizes.__dict__.items()}

    def fingerprint(self) -> dict:
        d = {**config_to_dict(self.cfg), **self.sizes_dict()}
        return {k: d.get(k) for k in _FINGERPRINT_KEYS}

    def prepare(self) -> None:
        """Check the output dir's settings; apply --restart_from."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        fp = self.fingerprint()
        if self.cfg.restart_from:
            groups = list(STAGES)
            for g in groups[groups.index(self.cfg.restart_from):]:
                for p in self.paths.stages.glob(f"{g}*.json"):
                    p.unlink()
                for out in self.paths.stage_outputs(g):
                    if out.is_dir():
                        shutil.rmtree(out)
                    elif out.exists():
                        out.unlink()
        elif self.paths.config.is_file():
            old = json.loads(self.paths.config.read_text()).get("fingerprint", {})
            diff = sorted(k for k in fp if k in old and old[k] != fp[k])
            if diff:
                changes = ", ".join(f"{k}: {old[k]!r} -> {fp[k]!r}" for k in diff)
                raise LatentVLAError(f"{self.paths.config}: this output directory was made with other "
                                     f"settings ({changes}); use another --output_dir, or --restart_from STAGE to redo "
                                     "that stage and the later ones")
        atomic_write_json(self.paths.config, {"fingerprint": fp, "config": config_to_dict(self.cfg),
                                              "sizes": self.sizes_dict()})

    def stage_func(self, name: str) -> Callable[[], dict]:
        """`stage_<name>`; `train:<v>` / `evaluate:<v>` call `stage_train(v)` / `stage_evaluate(v)`."""
        group, _, arg = name.partition(":")
        if arg and arg != "reference":
            return lambda: getattr(self, f"stage_{group}")(arg)
        return getattr(self, f"stage_{group}" + ("_reference" if arg else ""))

    def run(self) -> dict:
        self.prepare()
        names = self.stage_names()
        t_all = time.perf_counter()
        info: dict = {}
        ran_any = False
        for i, name in enumerate(names, 1):
            prev = self.done(name)
            if name == "report" and ran_any:
                prev = None  # an earlier stage ran in this invocation: the report must include it
            if prev is not None:
                print(f"[{i}/{len(names)}] {name}: done ({prev.get('seconds', 0):.0f} s), skipping", flush=True)
                info[name] = prev
            else:
                print(f"[{i}/{len(names)}] {name} ...", flush=True)
                t0 = time.perf_counter()
                ran_any = True
                out = self.stage_func(name)() or {}
                out = {"stage": name, "seconds": round(time.perf_counter() - t0, 1),
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **out}
                atomic_write_json(self.marker(name), out)
                info[name] = out
                print(f"[{i}/{len(names)}] {name}: finished in {out['seconds']:.0f} s", flush=True)
            group = name.split(":")[0]
            if self.cfg.stop_after and group == self.cfg.stop_after and not any(
                    n.split(":")[0] == group for n in names[i:]):
                print(f"stopping after stage {self.cfg.stop_after!r} (--stop_after)")
                break
        print(f"demo: {time.perf_counter() - t_all:.0f} s this run; outputs in {self.paths.root}")
        return info

    # --- stage bodies
    def stage_data(self) -> dict:
        from latentvla.demo.expert_data import write_expert_dataset

        s = self.sizes
        path, stats = write_expert_dataset(self.paths.data_root, s.tasks, s.demos_per_task, seed=self.cfg.seed,
                                           image_size=s.image_size, max_episode_steps=s.max_episode_steps,
                                           action_noise=self.cfg.action_noise, overwrite=True)
        return {"dataset": str(path), "per_task": stats,
                "episodes": sum(v["kept"] for v in stats.values()), "steps": sum(v["steps"] for v in stats.values())}

    def stage_models(self) -> dict:
        if not self.cfg.vlm_path:
            h = self.sizes.vlm_hidden_size
            call_command("tiny-vlm", [str(self.paths.vlm), "--hidden_size", str(h),
                                      "--num_layers", str(self.sizes.vlm_num_layers), "--intermediate_size",
                                      str(2 * h), "--seed", str(self.cfg.seed), "--overwrite", "True"],
                         stage="models", log=self.paths.commands)
        return {"vlm_path": self.vlm_path()}

    def write_dino(self) -> None:
        """The tiny random DINOv2 of the image LAM (written by the stage that needs it: a run started
        with `--variants baseline` can add the latent variants later in the same output dir)."""
        if not (self.paths.dino / "config.json").is_file():
            call_command("tiny-dino", [str(self.paths.dino), "--image_size", str(self.lam_image_size()),
                                       "--seed", str(self.cfg.seed), "--overwrite", "True"],
                         stage="image_lam", log=self.paths.commands)

    def vlm_path(self) -> str:
        return self.cfg.vlm_path or str(self.paths.vlm)

    def lam_image_size(self) -> int:
        return 56 if self.sizes.image_size < 128 else 112  # tiny DINO (patch 14): 16 or 64 patches per frame

    def common_data_flags(self) -> list[str]:
        return ["--data_root_dir", str(self.paths.data_root), "--data_mix", DATA_NAME]

    def device_flags(self, auto: bool = False) -> list[str]:
        if self.cfg.device:
            return ["--device", self.cfg.device]
        return ["--device", "auto"] if auto else []

    def stage_action_tokenizer(self) -> dict:
        s = self.sizes
        resume = any(self.paths.tokenizer.glob("tokenizer_step_*.pt"))
        call_command("lam action-train", [
            *self.common_data_flags(), "--results_dir", str(self.paths.tokenizer),
            "--num_steps", str(s.tokenizer_steps), "--batch_size", "32", "--learning_rate", "1e-3",
            "--save_every", str(s.tokenizer_steps),
            "--log_every", str(max(1, s.tokenizer_steps // 10)), "--seed", str(self.cfg.seed), "--resume", str(resume),
            "--eval_batches", "4", *self.device_flags(auto=True)], stage="action_tokenizer", log=self.paths.commands)
        ckpt = latest_tokenizer(self.paths.tokenizer)
        report = self.paths.tokenizer / "report.json"
        return {"checkpoint": str(ckpt), "report": json.loads(report.read_text()) if report.is_file() else None}

    def stage_image_lam(self) -> dict:
        s = self.sizes
        self.write_dino()
        call_command("lam image-train", [
            *self.common_data_flags(), "--dino_path", str(self.paths.dino), "--stage", "2",
            "--results_dir", str(self.paths.image_lam.parent), "--run_id", self.paths.image_lam.name,
            "--max_steps", str(s.lam_steps), "--batch_size", "16", "--model_dim", "64", "--enc_blocks", "2",
            "--dec_blocks", "2", "--num_heads", "4", "--pair_offset", str(s.lam_pair_offset),
            "--image_size", str(self.lam_image_size()), "--learning_rate", "5e-4", "--save_every", str(s.lam_steps),
            "--log_every", str(max(1, s.lam_steps // 10)), "--seed", str(self.cfg.seed), "--resume", "True",
            *self.device_flags()], stage="image_lam", log=self.paths.commands)
        return {"checkpoint": str(latest_checkpoint(self.paths.image_lam, "image LAM"))}

    def stage_annotate(self) -> dict:
        ckpt = latest_checkpoint(self.paths.image_lam, "image LAM")
        call_command("lam annotate", [
            "--lam_ckpt", str(ckpt), *self.common_data_flags(), "--pair_offset", str(self.sizes.lam_pair_offset),
            "--batch_size", "64", *self.device_flags()], stage="annotate", log=self.paths.commands)
        if not (self.paths.latent_dataset / "dataset_info.json").is_file():
            raise LatentVLAError("demo stage 'annotate': `latentvla lam annotate` did not write "
                                 f"{self.paths.latent_dataset}")
        return {"dataset": str(self.paths.latent_dataset)}

    def stage_train(self, variant: str) -> dict:
        s = self.sizes
        run_dir = self.paths.runs / variant
        argv = [
            "--vla_id", variant, "--vlm_path", self.vlm_path(), "--data_root_dir", str(self.paths.data_root),
            "--data_mix", json.dumps([DATA_NAME]), "--run_root_dir", str(self.paths.runs), "--run_id", variant,
            "--default_image_size", str(s.image_size), "--use_wrist_image", "True", "--use_proprio", "True",
            "--image_aug", "False", "--max_steps", str(s.train_steps), "--per_device_batch_size", str(s.batch_size),
            "--learning_rate", str(s.learning_rate), "--lr_scheduler_type", "linear-warmup+cosine-decay",
            "--warmup_ratio", "0.05", "--lora_rank", str(s.lora_rank), "--lora_alpha", str(s.lora_rank),
            "--save_step", str(max(1, s.train_steps // 4)), "--keep_checkpoints", "1",
            "--num_workers", str(self.cfg.num_workers), "--seed", str(self.cfg.seed),
            "--log_step", str(max(1, s.train_steps // 50)), "--wandb_project", "latentvla-demo",
            "--resume", str((run_dir / "checkpoints").is_dir()), *self.device_flags()]
        if strategy_class(variant).helper_option == "action_tokenizer_ckpt":
            argv += ["--action_tokenizer_ckpt", str(latest_tokenizer(self.paths.tokenizer))]
        t0 = time.perf_counter()
        call_command("train", argv, stage=f"train:{variant}", log=self.paths.commands)
        seconds = time.perf_counter() - t0
        ckpt = latest_checkpoint(run_dir, f"train:{variant}")
        return {"run_dir": str(run_dir), "checkpoint": str(ckpt), "train_seconds": round(seconds, 1),
                "final_metrics": last_metrics(run_dir / "metrics.jsonl")}

    def eval_kwargs(self) -> dict:
        s = self.sizes
        return dict(tasks=list(s.tasks), episodes_per_task=s.eval_episodes_per_task, seed=self.cfg.seed,
                    image_size=s.image_size, max_episode_steps=s.max_episode_steps)

    def stage_evaluate_reference(self) -> dict:
        return {kind: evaluate_metaworld(PolicySpec(kind=kind, platform="metaworld", seed=self.cfg.seed),
                                         out_dir=self.paths.eval / kind, label=kind, **self.eval_kwargs())
                for kind in ("random", "expert")}

    def stage_evaluate(self, variant: str) -> dict:
        trained = self.done(f"train:{variant}")
        ckpt = Path(trained["checkpoint"]) if trained else latest_checkpoint(self.paths.runs / variant,
                                                                             f"train:{variant}")
        policy = PolicySpec(kind="vla", checkpoint=str(ckpt), platform="metaworld", device=self.cfg.device)
        summary = evaluate_metaworld(policy, out_dir=self.paths.eval / variant, label=variant, checkpoint=str(ckpt),
                                     num_videos=self.sizes.videos_per_variant, **self.eval_kwargs())
        return {"checkpoint": str(ckpt), "summary": summary}

    def stage_report(self) -> dict:
        from latentvla.demo.report import write_report

        stages = {n: self.done(n) for n in self.stage_names() if n != "report"}
        return write_report(self.paths.root, self.variants, stages, config=json.loads(self.paths.config.read_text()))


def last_metrics(path: Path) -> dict:
    """The last record of a metrics.jsonl (the training's final logged metrics)."""
    if not path.is_file():
        return {}
    last: dict = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            last = rec
    return last


SEEDS_FILE = "seeds.json"


def run_demo(cfg: DemoConfig) -> int:
    from latentvla.eval.metaworld_env import configure_rendering

    configure_rendering(cfg.mujoco_gl)
    if cfg.seeds > 1:
        return run_seeds(cfg)
    root = Path(cfg.output_dir)
    if (root / SEEDS_FILE).is_file():
        raise LatentVLAError(f"{root} holds a `--seeds N` demo (seed_<s>/ runs); pass the same --seeds, or point "
                             f"--output_dir at one of its seed_<s>/ dirs, or use another --output_dir")
    Demo(cfg).run()
    return 0


def run_seeds(cfg: DemoConfig) -> int:
    """The demo once per seed (each its own resumable run dir), then the across-seed report."""
    from latentvla.demo.report import write_seeds_report

    root = Path(cfg.output_dir)
    if (root / "demo_config.json").is_file():
        raise LatentVLAError(f"{root} holds a single-seed demo run; use another --output_dir for --seeds {cfg.seeds} "
                             f"(or move that run to {root / f'seed_{cfg.seed}'} to reuse it as the first seed)")
    root.mkdir(parents=True, exist_ok=True)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    atomic_write_json(root / SEEDS_FILE, {"seeds": seeds, "config": config_to_dict(cfg)})
    for i, s in enumerate(seeds, 1):
        sub = dataclasses.replace(cfg, seed=s, seeds=1, output_dir=str(root / f"seed_{s}"))
        print(f"=== demo seed {s} ({i}/{len(seeds)}): {sub.output_dir}", flush=True)
        Demo(sub).run()
    results = {s: root / f"seed_{s}" / "results.json" for s in seeds}
    per_seed = {s: json.loads(p.read_text()) for s, p in results.items() if p.is_file()}
    missing = [s for s in seeds if s not in per_seed]
    if missing:
        print(f"demo --seeds: no report yet for seed(s) {', '.join(map(str, missing))} (--stop_after?); "
              "the across-seed table covers the others")
    if per_seed:
        write_seeds_report(root, per_seed, {**config_to_dict(cfg), "seeds": seeds})
    return 0

