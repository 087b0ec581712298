"""Checks of `latentvla train`'s inputs that run before any heavy work (no backbone, no images).

Each failure is one `LatentVLAError` naming the flag / file and what was expected:
  - `--vlm_path` not a Qwen3-VL directory;
  - `--data_mix` unknown (the registry lists the known names) or its directory missing;
  - `--robot` disagreeing with the dataset's registered platform;
  - `--window_size` != the platform's chunk length;
  - a variant whose strategy needs step keys (la_align `latent_z`, la_direct / la_cond `latent_idx`)
    on a dataset without them (neither the dataset nor its annotated `<dir>_latent` sibling has them);
  - the run directory not writable (read-only disk, permissions, a regular file on the way);
  - a truncated / corrupt `*.safetensors` under `--vlm_path` or `--pretrained_checkpoint`;
  - a strategy's frozen helper model missing or not fitting (`Strategy.load_helper`; la_tok: no
    `--action_tokenizer_ckpt`, or its codebook / action dim / chunk length do not fit);
  - `--pretrained_checkpoint` (read only with `--from_pretrained True`) that is not a checkpoint (or
    run) directory, or is a `--merge_lora` export.
`--vlm_path` / `--pretrained_checkpoint` may also be Hugging Face repo ids (`org/name[@revision]`):
they are resolved here to the local snapshot (`latentvla.utils.hub`), so later code sees local paths.
(`TrainConfig.validate()` already covered unknown `--vla_id` and batch-size divisibility.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError
from latentvla.robots import Platform
from latentvla.train.configuration_train import TrainConfig
from latentvla.utils.json_files import read_json
from latentvla.vla.configuration_vla import STRATEGIES, strategy_class


@dataclass
class PreflightResult:
    platform: Platform
    dataset_names: list[str]
    vla_values: dict[str, Any] = field(default_factory=dict)  # VLAConfig values the data / the helper decide
    helper: Any = None  # the strategy's frozen helper model on CPU (la_tok: the action tokenizer)
    pretrained_dir: Path | None = None  # --pretrained_checkpoint resolved to a step_N directory
    dataset_dirs: list[Path] = field(default_factory=list)  # directories read (the `_latent` sibling if labelled there)
    notes: list[str] = field(default_factory=list)
    hub: dict[str, dict] = field(default_factory=dict)  # option -> {repo_id, revision, local_path}: given as a Hub id


def check_vlm_dir(vlm_path: str) -> None:
    p = Path(vlm_path)
    if not p.is_dir():
        raise LatentVLAError(f"--vlm_path {vlm_path!r}: directory not found (expected a local Qwen3-VL directory "
                             "with config.json, weights and tokenizer, or a Hugging Face repo id such as "
                             "Qwen/Qwen3-VL-2B-Instruct; `latentvla tiny-vlm DIR` writes a tiny one)")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise LatentVLAError(f"--vlm_path {vlm_path}: no config.json (not a Hugging Face model directory)")
    cfg = read_json(cfg_file)
    model_type = str(cfg.get("model_type", ""))
    archs = [str(a) for a in cfg.get("architectures") or []]
    if model_type != "qwen3_vl" and not any(a.startswith("Qwen3VL") for a in archs):
        raise LatentVLAError(f"--vlm_path {vlm_path}: config.json has model_type {model_type!r} "
                             f"(architectures {archs}); expected a Qwen3-VL model (model_type 'qwen3_vl')")
    from latentvla.utils.weight_files import check_safetensors_dir

    # A truncated download / copy fails here in seconds, naming the file, not inside transformers.
    check_safetensors_dir(p, "--vlm_path", "download or copy the backbone again")


@dataclass
class LatentLabels:
    codes_per_step: int | None
    latent_dim: int | None
    codebook_size: int | None  # K from `latent_annotation.json` (None: the file or field is absent)
    directories: list[Path]  # per dataset: the directory that holds the labels (often the `_latent` sibling)


def _annotation_codebook_size(directory: Path) -> int | None:
    """K of the image LAM that annotated `directory` (`latent_annotation.json`, written by `lam annotate`)."""
    f = directory / "latent_annotation.json"
    if not f.is_file():
        return None
    try:
        k = json.loads(f.read_text()).get("codebook_size")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise LatentVLAError(f"{f}: cannot read the annotation record ({e})") from None
    if k is None:
        return None
    if not isinstance(k, int) or k < 1:
        raise LatentVLAError(f"{f}: codebook_size must be a positive integer, got {k!r}")
    return k


def _latent_shapes(resolved: list, keys: tuple[str, ...], vla_id: str) -> LatentLabels:
    from latentvla.data.latent_labels import adopt_undeclared_latents
    from latentvla.data.registry import latent_sibling, latent_sibling_path
    from latentvla.data.store import dataset_format, open_dataset_dir

    shapes: dict[str, tuple] = {}
    sizes: list[int] = []
    directories: list[Path] = []
    for r in resolved:
        candidates = [r] + ([s] if (s := latent_sibling(r)) is not None else [])
        found = None
        problems: list[str] = []
        for c in candidates:
            builder = open_dataset_dir(c.path, dataset_format(c))
            if not all(f"steps/{k}" in builder.specs for k in keys):
                # labels in the records that features.json does not declare (the paper's latent.py): used
                # with a notice, or a message with the fix
                undeclared = adopt_undeclared_latents(builder)
                if undeclared is not None and undeclared.problem:
                    problems.append(undeclared.problem)
            specs = builder.specs
            if all(f"steps/{k}" in specs for k in keys):
                found = specs
                directories.append(Path(c.path))
                if (k := _annotation_codebook_size(Path(c.path))) is not None:
                    sizes.append(k)
                break
        if found is None and problems:
            raise LatentVLAError(f"--vla_id {vla_id} needs image-LAM latent labels: {problems[0]}")
        if found is None:
            plain = [i for i in STRATEGIES if not strategy_class(i).required_sample_keys]
            raise LatentVLAError(
                f"--vla_id {vla_id} needs image-LAM latent labels (step keys {', '.join(keys)}) but dataset "
                f"{r.name!r} ({r.path}) has none, nor has {latent_sibling_path(r.path)}; annotate it with "
                f"`latentvla lam annotate` (writes latent_idx and latent_z) or train {' / '.join(plain)}, which need "
                "no labels")
        for k in keys:
            shapes.setdefault(k, tuple(found[f"steps/{k}"].shape))
            if tuple(found[f"steps/{k}"].shape) != shapes[k]:
                raise LatentVLAError(f"--data_mix: datasets disagree on the shape of {k} "
                                     f"({shapes[k]} vs {tuple(found[f'steps/{k}'].shape)} in {r.name!r})")
    idx, z = shapes.get("latent_idx"), shapes.get("latent_z")
    c = idx[0] if idx else (z[0] if z else None)
    return LatentLabels(c, z[-1] if z else None, max(sizes) if sizes else None, directories)


def tokenizer_statistics_mismatch(tokenizer_stats: dict, data_stats: dict, rtol: float = 1e-3,
                                  atol: float = 1e-4) -> list[str]:
    """Datasets whose action statistics saved in the action tokenizer differ from the VLA data's
    (the tokenizer then sees actions normalized differently than when it was trained)."""
    import numpy as np

    out = []
    for name in sorted(set(tokenizer_stats) & set(data_stats)):
        a = (tokenizer_stats.get(name) or {}).get("action") or {}
        b = (data_stats.get(name) or {}).get("action") or {}
        for key in ("q01", "q99", "mean", "std", "min", "max"):
            if key in a and key in b:
                x, y = np.asarray(a[key], dtype=np.float64), np.asarray(b[key], dtype=np.float64)
                if x.shape != y.shape or not np.allclose(x, y, rtol=rtol, atol=atol):
                    out.append(name)
                    break
    return out


def check_pretrained(path: str) -> Path:
    """The policy checkpoint `--pretrained_checkpoint` names: a `checkpoints/step_N` dir, or a run dir /
    its `checkpoints/` / `checkpoints/latest` (-> the newest checkpoint). A `--merge_lora` export is refused."""
    from latentvla.vla.checkpoint import MERGED_FORMAT, resolve_policy_dir

    try:
        p = resolve_policy_dir(path)
    except LatentVLAError as e:
        raise LatentVLAError(f"--pretrained_checkpoint: {e}") from None
    if not (p / "model.safetensors").is_file() or not (p / "config.json").is_file():
        raise LatentVLAError(f"--pretrained_checkpoint {path}: expected a checkpoint directory written by latentvla "
                             "train (model.safetensors + config.json), e.g. <run>/checkpoints/step_N or "
                             "the run dir <run>")
    from safetensors import safe_open

    from latentvla.utils.weight_files import check_safetensors

    check_safetensors(p / "model.safetensors", "--pretrained_checkpoint: choose another checkpoint of the run")
    with safe_open(str(p / "model.safetensors"), framework="pt") as f:  # the header only (no tensors)
        merged = (f.metadata() or {}).get("format") == MERGED_FORMAT
    if merged:
        raise LatentVLAError(f"--pretrained_checkpoint {path}: this is a --merge_lora export (LoRA folded into the "
                             "backbone), which cannot warm-start LoRA training; pass the run's checkpoint instead "
                             "(<run>/checkpoints/step_N, or the run dir <run> for the newest)")
    return p


def _check_backends(cfg: TrainConfig) -> None:
    """Requested loggers installed, requested device present (else the error would come after loading)."""
    import importlib.util

    from latentvla.train.loggers import swanlab_enabled

    wanted = [("wandb", "--use_wandb True", cfg.use_wandb), ("swanlab", "ENABLE_SWANLAB=1", swanlab_enabled()),
              ("tensorboard", "--use_tensorboard True", cfg.use_tensorboard)]
    for module, why, on in wanted:
        if on and importlib.util.find_spec(module) is None:
            raise LatentVLAError(f"{why} needs the {module} package: pip install 'latentvla[{module}]'")
    from latentvla.utils.device import resolve_device

    resolve_device(cfg.device)


def check_run_dir(cfg: TrainConfig) -> None:
    """The run directory (and its checkpoints/) can be created and written: a read-only disk or a
    regular file on the way fails now, not after the backbone is loaded and the data indexed."""
    from latentvla.train.run import run_dir_of
    from latentvla.utils.paths import check_writable_dir

    run_dir = run_dir_of(cfg)
    for d in (run_dir, run_dir / "checkpoints"):
        check_writable_dir(d, f"--run_root_dir {cfg.run_root_dir}: run directory")


def ignored_option_notes(cfg: TrainConfig, strategy) -> list[str]:
    """Variant-specific options (`Strategy.options`, `helper_option`) set for a variant that ignores them."""
    def reads(cls) -> tuple:
        return (*cls.options, cls.helper_option)

    own = reads(strategy)
    changed = [f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != f.default and f.name not in own]
    users = {name: [v for v in STRATEGIES if name in reads(strategy_class(v))] for name in changed}
    return [f"--{n} is only used by {', '.join(ids)}; ignored for {cfg.vla_id}" for n, ids in users.items() if ids]


def preflight(cfg: TrainConfig) -> PreflightResult:
    """All file-level checks; cheap (reads JSON metadata and, for la_tok, the small tokenizer)."""
    from latentvla.data.registry import resolve_data_mix
    from latentvla.utils.hub import resolve_model_flags

    cfg.validate()
    check_run_dir(cfg)
    # Only --from_pretrained True reads --pretrained_checkpoint: the paper's scripts pass a placeholder with False.
    hub = resolve_model_flags(cfg, {"vlm_path": (), **({"pretrained_checkpoint": ()} if cfg.from_pretrained else {})})
    if "vlm_path" in hub and not cfg.vlm_model_id:
        cfg.vlm_model_id = hub["vlm_path"]["repo_id"]  # the backbone's name, recorded in the run config
    check_vlm_dir(cfg.vlm_path)
    resolved = resolve_data_mix(cfg.data_root_dir, cfg.data_mix, cfg.dataset_registry)
    platforms = sorted({r.entry.platform_name for r in resolved})
    if len(platforms) > 1:
        raise LatentVLAError(f"--data_mix {cfg.data_mix}: datasets use different platforms ({', '.join(platforms)}); "
                             "one run trains one platform")
    platform = resolved[0].entry.platform
    if cfg.robot is not None and cfg.robot != platform.name:
        raise LatentVLAError(f"--robot {cfg.robot!r}: dataset {resolved[0].name!r} is registered with platform "
                             f"{platform.name!r}; register it with platform {cfg.robot!r} in a --dataset_registry file "
                             "to train it as that robot")
    if cfg.window_size is not None and cfg.window_size != platform.chunk_len:
        raise LatentVLAError(f"--window_size {cfg.window_size} does not match the chunk length {platform.chunk_len} "
                             f"of platform {platform.name!r} (dataset {resolved[0].name!r}); use --window_size "
                             f"{platform.chunk_len} or leave it out")
    res = PreflightResult(platform, [r.name for r in resolved], dataset_dirs=[Path(r.path) for r in resolved], hub=hub)
    res.notes += [f"--{name} {h['repo_id']}{'@' + h['revision'] if h['revision'] else ''}: Hugging Face snapshot "
                  f"{h['local_path']}" for name, h in hub.items()]
    strategy = strategy_class(cfg.vla_id)
    keys = strategy.required_sample_keys
    if keys:
        labels = _latent_shapes(resolved, keys, cfg.vla_id)
        res.vla_values.update({k: v for k, v in (("latent_codes_per_step", labels.codes_per_step),
                                                 ("latent_dim", labels.latent_dim)) if v is not None})
        res.dataset_dirs = labels.directories
        if "latent_idx" in keys and labels.codebook_size is not None:
            if cfg.latent_codebook_size is None:
                res.vla_values["latent_codebook_size"] = labels.codebook_size
            elif cfg.latent_codebook_size < labels.codebook_size:
                raise LatentVLAError(f"--latent_codebook_size {cfg.latent_codebook_size} is smaller than the codebook "
                                     f"size {labels.codebook_size} of the image LAM that annotated the data "
                                     "(latent_annotation.json); leave the flag out to use it")
    if strategy.helper_option is not None:
        res.helper, values = strategy.load_helper(cfg, platform)
        res.vla_values.update(values)
    res.notes += ignored_option_notes(cfg, strategy)
    if cfg.from_pretrained:
        res.pretrained_dir = check_pretrained(cfg.pretrained_checkpoint)
    elif cfg.pretrained_checkpoint:
        res.notes.append(f"--pretrained_checkpoint {cfg.pretrained_checkpoint} ignored: weights are loaded from it "
                         "only with --from_pretrained True")
    _check_backends(cfg)
    if cfg.use_latent is not None and cfg.use_latent != bool(keys or strategy.helper_option):
        res.notes.append(f"--use_latent {cfg.use_latent} ignored: --vla_id {cfg.vla_id} decides which labels are used")
    if cfg.shuffle_buffer_size != 256000:
        res.notes.append("--shuffle_buffer_size ignored: sampling is a seeded permutation over all transitions")
    return res
