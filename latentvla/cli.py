"""The `latentvla` command.

Sub-commands are declared in `COMMANDS`: a space-separated command path, the config dataclass
("module:Class", in a light module that does not import torch) and the function that runs it
("module:function", taking the config). Options and `--help` are generated from the dataclass
(see `latentvla.config`). Heavy modules are imported only when a command runs.

To add a command: write its config dataclass and its run function, then add one line here.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from latentvla.errors import LatentVLAError, format_error


@dataclass(frozen=True)
class Command:
    config: str  # "module:ConfigClass"
    run: str  # "module:function"
    help: str


COMMANDS: dict[str, Command] = {
    "tiny-vlm": Command("latentvla.vla.configuration_tiny:TinyVLMConfig", "latentvla.vla.tiny:write_tiny_vlm",
                        "Write a tiny random Qwen3-VL checkpoint directory (Hugging Face layout) for tests and demos."),
    "tiny-dino": Command("latentvla.lam.configuration_tiny_dino:TinyDinoConfig",
                         "latentvla.lam.tiny_dino:write_tiny_dino",
                         "Write a tiny random DINOv2-with-registers checkpoint directory (for the image LAM)."),
    "train": Command("latentvla.train.configuration_train:TrainConfig", "latentvla.train.run:train",
                     "Train a VLA policy (a variant of the strategy registry, --vla_id); torchrun for DDP / FSDP2."),
    "robots": Command("latentvla.robots:RobotsConfig", "latentvla.robots:print_platforms",
                      "List the built-in robot platforms (chunk length, action/proprio dims, normalization)."),
    "data stats": Command("latentvla.data.configuration_data:DataStatsConfig", "latentvla.data.commands:data_stats",
                          "Print per-dataset action/proprio statistics of a data mix as JSON (cached)."),
    "data inspect": Command("latentvla.data.configuration_data:DataInspectConfig",
                            "latentvla.data.commands:data_inspect",
                            "Print a data mix's episodes (lengths, instructions; --episode K: actions, proprio, image "
                            "shapes) as JSON."),
    "data declare-latents": Command("latentvla.data.configuration_data:DataDeclareLatentsConfig",
                                    "latentvla.data.commands:data_declare_latents",
                                    "Declare in features.json the latent labels a dataset's records carry undeclared "
                                    "(the paper's latent.py output)."),
    "data convert": Command("latentvla.data.convert:DataConvertConfig", "latentvla.data.convert:run_convert",
                            "Convert a dataset between RLDS and LeRobot v3.0 (--from D1 --to D2 --format "
                            "rlds|lerobot)."),
    "eval libero": Command("latentvla.eval.configuration_eval:LiberoEvalConfig",
                           "latentvla.eval.libero_eval:run_libero_eval",
                           "Closed-loop LIBERO evaluation: success per task and suite, JSONL + summary + "
                           "MP4s, resumable."),
    "eval metaworld": Command("latentvla.eval.configuration_eval:MetaWorldEvalConfig",
                              "latentvla.eval.metaworld_eval:run_metaworld_eval",
                              "Closed-loop Meta-World evaluation on held-out seeds, through eval libero's engine."),
    "eval robustness": Command("latentvla.eval.configuration_eval:RobustnessEvalConfig",
                               "latentvla.eval.robustness:run_robustness",
                               "A LIBERO suite and each of its LIBERO-PRO perturbations: success and drop "
                               "per perturbation."),
    "eval compare": Command("latentvla.eval.configuration_eval:EvalCompareConfig", "latentvla.eval.compare:run_compare",
                            "Two evaluations on the same initial states: per-task difference, exact McNemar test."),
    "serve": Command("latentvla.serve.configuration_serve:ServeConfig", "latentvla.serve.server:run_server",
                     "Serve a policy checkpoint over a websocket (msgpack numpy) for robots and simulators."),
    "lam action-train": Command("latentvla.lam.configuration_action_tokenizer:ActionTrainConfig",
                                "latentvla.train.lam_run:run_action_train",
                                "Train the VQ action-chunk tokenizer (la_tok targets) on a data mix's action chunks."),
    "lam image-train": Command("latentvla.lam.configuration_image_lam:ImageLAMTrainConfig",
                               "latentvla.train.lam_run:run_image_train",
                               "Train the UniVLA-style image latent action model on frame pairs (stage 1 or 2)."),
    "lam annotate": Command("latentvla.lam.configuration_image_lam:AnnotateConfig",
                            "latentvla.lam.annotate:run_annotate",
                            "Write a copy of an RLDS or LeRobot dataset with image-LAM latent actions "
                            "(latent_idx, latent_z)."),
    "demo": Command("latentvla.demo.configuration_demo:DemoConfig", "latentvla.demo.pipeline:run_demo",
                    "The whole study end to end on Meta-World (CPU, no downloads): data, LAMs, 5 "
                    "variants, eval, report."),
}

GROUP_HELP = {
    "data": "Inspect datasets (statistics, episodes), declare latent labels, convert RLDS <-> LeRobot.",
    "lam": "Latent action models: action tokenizer, image LAM, dataset annotation.",
    "eval": "Closed-loop evaluation (LIBERO, Meta-World).",
}


def _load(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _print_overview(prefix: str = "") -> None:
    prog = "latentvla" + (f" {prefix}" if prefix else "")
    entries: dict[str, str] = {}
    for path, cmd in COMMANDS.items():
        if prefix and not path.startswith(prefix + " "):
            continue
        rest = path[len(prefix) + 1:] if prefix else path
        head = rest.split(" ")[0]
        if " " in rest:
            entries.setdefault(head, GROUP_HELP.get((prefix + " " + head).strip(), "(group)") + "  [sub-commands]")
        else:
            entries[head] = cmd.help
    print(f"usage: {prog} <command> [options]\n")
    if not prefix:
        print("Train and evaluate Vision-Language-Action policies with latent action supervision.\n")
    print("commands:")
    width = max((len(k) for k in entries), default=0)
    for name in sorted(entries):
        print(f"  {name.ljust(width)}  {entries[name]}")
    print(f"\nRun '{prog} <command> --help' for the options of a command.")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        from latentvla import __version__

        print(f"latentvla {__version__}")
        return 0
    # Longest command path that prefixes argv.
    words = []
    for tok in argv:
        if tok.startswith("-"):
            break
        words.append(tok)
    match = None
    for n in range(len(words), 0, -1):
        path = " ".join(words[:n])
        if path in COMMANDS:
            match = (path, n)
            break
    if match is None:
        prefix = " ".join(words)
        groups = {p.rsplit(" ", 1)[0] for p in COMMANDS if " " in p}
        if not words or prefix in groups:
            _print_overview(prefix)
            asked = not argv or argv[-1] in ("-h", "--help") or prefix in groups and len(argv) == len(words)
            return 0 if asked else 2
        group = words[0] if words[0] in groups else ""  # `latentvla data foo` -> point at `latentvla data --help`
        print(f"latentvla: unknown command {prefix!r}; run 'latentvla "
              f"{group + ' ' if group else ''}--help' for the list.",
              file=sys.stderr)
        return 2
    path, n = match
    cmd = COMMANDS[path]
    from latentvla.config import parse_config

    cfg_cls = _load(cmd.config)
    try:
        cfg = parse_config(cfg_cls, argv[n:], prog=f"latentvla {path}", description=cmd.help)
        run: Callable = _load(cmd.run)
        result = run(cfg)
    except (LatentVLAError, OSError) as e:
        # OSError: an unreadable / unwritable / missing path reaches the user as `<path>: <problem>`,
        # not a traceback (LATENTVLA_TRACEBACK=1 shows the traceback, for bug reports).
        if os.environ.get("LATENTVLA_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"latentvla {path}: error: {format_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"latentvla {path}: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


def run_command(path: str, argv: Sequence[str]) -> int:
    """Entry for the paper-compatible shims (exp/train_vla.py, ...): `latentvla <path> argv...`."""
    return main([*path.split(" "), *argv])


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
