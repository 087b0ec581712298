"""`latentvla data convert --from D1 --to D2 --format {rlds,lerobot}`: RLDS <-> LeRobot v3.0.

Key mapping (the inverse of each other, so RLDS -> LeRobot -> RLDS gives the original keys back):

| RLDS step key | LeRobot feature |
|---|---|
| image `observation/<cam>` | video `observation.images.<cam>` |
| `observation/<x>` (tensor / scalar) | `observation.<x>` |
| `action`, `reward`, `is_first`, `latent_idx`, ... | the same name (`/` -> `.`) |
| `language_instruction` (the registry entry's `language_key`) | the frame's task |

Scalars become shape [1]. RLDS text features other than the instruction and
`episode_metadata/*` have no LeRobot counterpart and are left out (listed on stderr).
LeRobot -> RLDS writes camera frames as JPEG (quality 95; `--image_encoding png` for lossless)
and adds `is_first` / `is_last` / `is_terminal` when the source lacks them. lerobot's own
columns (`timestamp`, `frame_index`, `episode_index`, `index`, `task_index`) are implied by the
layout and not copied. Cameras come in the registry entry's order (primary first) when the source
directory's name is a registered dataset. Actions, states and instructions are copied exactly;
images lose what the codecs lose (AV1 / H.264 at crf 30, then JPEG).

The config lives here (no torch import) so `latentvla --help` stays fast.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from latentvla.config import arg
from latentvla.errors import LatentVLAError

ROBOT_TYPES = {"libero": "panda", "metaworld": "sawyer", "aloha": "aloha", "jaka": "jaka", "bridge": "widowx"}
IMAGE_PREFIX = "observation.images."


@dataclass
class DataConvertConfig:
    """Convert a dataset between RLDS (TFDS builder dir) and LeRobot v3.0; the output is written atomically."""

    from_dir: str = arg("", "Input dataset: an RLDS builder dir <root>/<name>/<version> (or <root>/<name> with one "
                            "version) or a LeRobot dataset dir (meta/info.json).", aliases=("--from",))
    to_dir: str = arg("", "Output directory: the LeRobot dataset root, or the RLDS builder dir (a trailing "
                          "version like 1.0.0 is added when missing).", aliases=("--to",))
    format: Literal["rlds", "lerobot"] | None = arg(None, "Output format (required): rlds or lerobot.")
    splits: list[str] | None = arg(None, "Splits of the input to convert (default: all; LeRobot splits are episode "
                                         "ranges in info.json).")
    fps: int = arg(10, "RLDS -> LeRobot: frames per second (RLDS does not record it).")
    robot_type: str | None = arg(None, "RLDS -> LeRobot: info.json robot_type (default: from the registry platform, "
                                       "e.g. libero -> panda).")
    vcodec: Literal["libsvtav1", "h264"] = arg("libsvtav1", "RLDS -> LeRobot: camera codec (AV1 via SVT-AV1, or "
                                                            "H.264 via libx264).")
    crf: int = arg(30, "RLDS -> LeRobot: video quality (lower is better; lerobot's default 30).")
    gop: int = arg(2, "RLDS -> LeRobot: keyframe interval in frames (lerobot's default 2).")
    image_encoding: Literal["jpeg", "png"] = arg("jpeg", "LeRobot -> RLDS: how camera frames are stored.")
    dataset_registry: str | None = arg(None, "YAML/JSON file registering extra datasets (key mapping, platform).")
    overwrite: bool = arg(False, "Replace an existing output.")

    def validate(self) -> None:
        if not self.from_dir or not self.to_dir:
            raise LatentVLAError("--from and --to are required")
        if self.format is None:
            raise LatentVLAError("--format is required (rlds or lerobot)")
        if self.fps < 1 or self.crf < 0 or self.gop < 1:
            raise LatentVLAError("--fps and --gop must be >= 1 and --crf >= 0")


# ----------------------------------------------------------------------------- key mapping

def rlds_to_lerobot_key(key: str, is_image: bool) -> str:
    if is_image:
        return IMAGE_PREFIX + key.split("/")[-1]
    return key.replace("/", ".")


def lerobot_to_rlds_key(key: str) -> str:
    if key.startswith(IMAGE_PREFIX):
        return "observation/" + key[len(IMAGE_PREFIX):]
    return key.replace(".", "/")


def _registry_entry(name: str, registry_file: str | None):
    from latentvla.data.registry import Registry

    try:
        return Registry(registry_file).get(name)
    except LatentVLAError:
        return None


def _note(msg: str) -> None:
    print(f"latentvla data convert: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- RLDS -> LeRobot

def _decode_rgb(data: bytes, shape: list[int], where: str):
    import numpy as np

    from latentvla.data.transforms import ImageDecodeError, decode_array

    try:
        img = decode_array(data)
    except ImageDecodeError as e:
        raise LatentVLAError(f"{where}: {e}") from None
    img = img if isinstance(img, np.ndarray) else np.asarray(img.convert("RGB"))
    if list(img.shape) != list(shape):
        raise LatentVLAError(f"{where}: image is {list(img.shape)}, features.json declares {list(shape)} (LeRobot "
                             "videos need one frame size per camera)")
    return img


def rlds_to_lerobot(cfg: DataConvertConfig) -> Path:
    from tqdm import tqdm

    from latentvla.data.latent_labels import resolve_version_dir
    from latentvla.data.lerobot_writer import LeRobotWriter
    from latentvla.data.tfds import TFDSBuilderDir, episode_key

    src = TFDSBuilderDir(resolve_version_dir(cfg.from_dir))
    entry = _registry_entry(src.name, cfg.dataset_registry)
    lang = entry.language_key if entry is not None else "language_instruction"
    lang_path = lang if lang.startswith("steps/") else f"steps/{lang}"
    if lang_path not in src.specs:
        raise LatentVLAError(f"{src.path}/features.json: no instruction feature {lang!r} (the task of each frame)")
    steps = {p: s for p, s in src.specs.items() if p.startswith("steps/")}
    images = [p for p, s in steps.items() if s.kind == "image"]
    if entry is not None:  # primary camera first, as the registry orders them
        order = [f"steps/observation/{k.split('/')[-1]}" for k in entry.image_keys]
        images = [p for p in order if p in images] + [p for p in images if p not in order]
    dropped = [episode_key(p) for p, s in src.specs.items()
               if not p.startswith("steps/") or (s.kind == "text" and p != lang_path)]
    if dropped:
        _note(f"left out (no LeRobot counterpart): {', '.join(dropped)}")
    features: dict[str, dict] = {}
    mapping: dict[str, str] = {}
    for p in images + [p for p, s in steps.items() if s.kind not in ("image", "text")]:
        spec, image = steps[p], steps[p].kind == "image"
        if image and (len(spec.shape) != 3 or spec.shape[2] != 3):
            raise LatentVLAError(f"{src.path}/features.json: image {episode_key(p)!r} has shape {list(spec.shape)}; "
                                 "only RGB [H, W, 3] cameras convert to LeRobot videos")
        key = rlds_to_lerobot_key(episode_key(p), image)
        if key in features:
            raise LatentVLAError(f"{src.path}: RLDS {'cameras' if image else 'keys'} map to the same LeRobot feature "
                                 f"{key!r}")
        features[key] = ({"dtype": "video", "shape": list(spec.shape), "names": ["height", "width", "channels"]}
                         if image else {"dtype": spec.dtype, "shape": list(spec.shape) or [1], "names": None})
        mapping[key] = episode_key(p)
    platform = entry.platform_name if entry is not None else None
    robot_type = cfg.robot_type or ROBOT_TYPES.get(platform or "", platform)
    out = Path(cfg.to_dir)
    splits = pick_splits(cfg.splits, src.split_names, src.path)
    n = sum(src.num_episodes(s) for s in splits)
    with LeRobotWriter(out, features, cfg.fps, robot_type=robot_type, vcodec=cfg.vcodec, crf=cfg.crf, gop=cfg.gop,
                       overwrite=cfg.overwrite) as w, tqdm(total=n, desc=f"convert {src.name}", unit="ep",
                                                           dynamic_ncols=True) as bar:
        w.splits = {}
        for split in splits:
            start = len(w.episodes)
            for e, ep in enumerate(src.iter_episodes(split)):
                bar.update(1)
                _add_rlds_episode(w, ep, mapping, features, episode_key(lang_path), f"{split} episode {e}")
            w.splits[split] = f"{start}:{len(w.episodes)}"
    print(f"wrote {out} (LeRobot v3.0: {len(w.episodes)} episodes, {w.num_frames} frames, "
          f"{len(w.video_keys)} camera(s) {cfg.vcodec})")
    return out


def pick_splits(asked: list[str] | None, have: list[str], where) -> list[str]:
    unknown = [s for s in asked or [] if s not in have]
    if unknown:
        raise LatentVLAError(f"--splits: {where} has no split {unknown[0]!r}; splits: {', '.join(have)}")
    return list(asked or have)


def _add_rlds_episode(w, ep: dict, mapping: dict[str, str], features: dict, lang: str, what: str) -> None:
    import numpy as np

    frames = {}
    for key, rk in mapping.items():
        v = ep[rk]
        if features[key]["dtype"] == "video" and len(v):
            v = np.stack([_decode_rgb(b, features[key]["shape"], f"{what} step {t} camera {rk!r}")
                          for t, b in enumerate(v)])
        frames[key] = v
    tasks = [str(t) for t in ep[lang]]
    if not tasks:
        _note(f"{what} has no steps; skipped (LeRobot has no empty episodes)")
        return
    w.add_episode(frames, tasks)


# ----------------------------------------------------------------------------- LeRobot -> RLDS

def _rlds_out_dir(to_dir: str) -> Path:
    out = Path(to_dir)
    return out if re.fullmatch(r"\d+\.\d+\.\d+", out.name) else out / "1.0.0"


def lerobot_to_rlds(cfg: DataConvertConfig) -> Path:
    import numpy as np
    from tqdm import tqdm

    from latentvla.data.features import image_feature, scalar_feature, tensor_feature, text_feature
    from latentvla.data.lerobot import DEFAULT_KEYS, LeRobotDir
    from latentvla.data.tfds import TFDSWriter

    src = LeRobotDir(cfg.from_dir)
    specs = {}
    mapping: dict[str, str] = {}
    for key, f in src.features.items():
        if key in DEFAULT_KEYS:
            continue
        dtype, shape = str(f.get("dtype")), [int(s) for s in f.get("shape") or [1]]
        rk = lerobot_to_rlds_key(key)
        if dtype == "video":
            specs[f"steps/{rk}"] = image_feature(shape, cfg.image_encoding)
        elif dtype in ("image", "string"):
            raise LatentVLAError(f"{src.info_path}: feature {key!r} has dtype {dtype!r}; only video and numeric "
                                 "features convert")
        else:
            specs[f"steps/{rk}"] = scalar_feature(dtype) if shape == [1] else tensor_feature(shape, dtype)
        mapping[rk] = key
    if "steps/language_instruction" in specs:
        raise LatentVLAError(f"{src.info_path}: a feature maps to language_instruction, which holds the task")
    specs["steps/language_instruction"] = text_feature()
    for k in ("is_first", "is_last", "is_terminal"):
        specs.setdefault(f"steps/{k}", scalar_feature("bool"))
    out = _rlds_out_dir(cfg.to_dir)
    splits = pick_splits(cfg.splits, src.split_names, src.info_path)
    n = sum(src.num_episodes(s) for s in splits)
    jobs = [(s, i) for s in splits for i in range(src.num_episodes(s))]
    with TFDSWriter(out, specs, splits=splits, overwrite=cfg.overwrite) as w:
        for split, i in tqdm(jobs, desc=f"convert {src.name}", unit="ep", dynamic_ncols=True):
            ep = src.read_episode(i, split, keys=list(mapping.values()) + ["task_index"])
            T = len(ep["task_index"])
            step = {rk: ep[key] for rk, key in mapping.items()}
            step["language_instruction"] = [src.tasks.get(int(t), ep["task"]) for t in ep["task_index"]]
            for k, flag in (("is_first", np.arange(T) == 0), ("is_last", np.arange(T) == T - 1),
                            ("is_terminal", np.arange(T) == T - 1)):
                step.setdefault(k, flag)
            step = {k: (np.asarray(v, bool) if specs[f"steps/{k}"].dtype == "bool" and not isinstance(v, list) else v)
                    for k, v in step.items()}
            w.add_episode(step, split)
    print(f"wrote {out} (RLDS: {n} episodes, from LeRobot {src.codebase_version})")
    return out


def run_convert(cfg: DataConvertConfig) -> int:
    cfg.validate()
    from latentvla.data.registry import detect_format

    src_fmt = detect_format(cfg.from_dir)
    if not Path(cfg.from_dir).is_dir():
        raise LatentVLAError(f"--from {cfg.from_dir}: directory not found")
    if src_fmt == cfg.format:
        raise LatentVLAError(f"--from {cfg.from_dir} is already {cfg.format}; --format names the output format")
    if Path(cfg.to_dir).resolve() == Path(cfg.from_dir).resolve():
        raise LatentVLAError("--to must differ from --from")
    out = rlds_to_lerobot(cfg) if cfg.format == "lerobot" else lerobot_to_rlds(cfg)
    return 0 if out else 1


