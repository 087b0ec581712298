"""Dataset registry: which keys of a dataset are cameras / proprio / actions, and its platform.

    entry = get_entry("libero_goal")                      # aliases resolve to one entry
    resolved = resolve_data_mix(data_root_dir, '["libero_goal", "libero_10"]', registry_file=None)
    # -> [ResolvedDataset(entry, path=<root>/libero_goal_no_noops/1.0.0, weight=1.0, name="libero_goal_no_noops")]

`--data_mix` is a mixture name, a dataset name, or a JSON list of names (or of [name, weight]).

Built in:
- LIBERO: `libero_spatial`, `libero_object`, `libero_goal`, `libero_10`, `libero_90`; canonical names are
  the public OpenVLA directory names `<suite>_no_noops` (also the statistics key), the short names
  are aliases. Mixture `libero_4_task_suites` (spatial, object, goal, 10).
- RoboTwin 2.0: `aloha_<task>` for the 12 tasks in `ROBOTWIN_TASKS`; any other `aloha_<task>`
  name resolves by pattern to the same layout. Mixture `robotwin`.
- JAKA real robot: `2_bowls`, `3_bowls`, `4_bowls`, `wipe`; mixture `jaka`.
- Any other `libero_<x>` name: the LIBERO layout (e.g. a custom suite in the public release format).
- Meta-World (`latentvla demo`): `metaworld` and any `metaworld_<task>` (keys image, wrist_image,
  state, action; platform `metaworld`; no standardization).

LeRobot datasets (v3.0 / v2.1) are found the same way, as `<root>/<name>/` holding `meta/info.json`
(no version level); the keys above map to LeRobot feature names (`image` ->
`observation.images.image`, `state` -> `observation.state`; `latentvla.data.lerobot_index`), so
`libero_<x>` LeRobot copies of LIBERO use the built-in LIBERO layout and platform; so does any other
unregistered LeRobot directory whose `robot_type` is `panda`.

Annotated copies (`latentvla lam annotate` writes `<dir>_latent/<version>`): the name
`<any name>_latent` (e.g. `libero_goal_latent`) resolves to the same entry with the `_latent`
directory. `VLADataset(extra_keys=...)` also finds the `_latent` sibling on its own when the plain
directory lacks the requested keys. Statistics keep the base name, so checkpoints un-normalize
with the same key either way.

User datasets: a YAML/JSON file (`--dataset_registry FILE`), no library edits:

    datasets:
      - name: my_robot                 # also the directory name unless `directory:` is given
        aliases: [mine]
        platform: libero               # a built-in name, or a mapping defining a new platform
        image_keys: [image, wrist_image]          # primary first; "observation/" is optional
        proprio_keys: ["state[:6]", "state[-2:]"] # concatenated; python slices allowed
        action_key: action
        action_standardization: none   # none | libero_gripper
        version: 1.0.0                 # optional; default: the highest version directory
        format: lerobot                # optional: rlds | lerobot; default: detected (meta/info.json = lerobot)
    mixtures:
      my_mix: [[my_robot, 1.0], [libero_goal, 0.5]]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError
from latentvla.robots import Platform, get_platform, register_platform

STANDARDIZATIONS = ("none", "libero_gripper")
FORMATS = ("rlds", "lerobot")
LATENT_SUFFIX = "_latent"


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    platform_name: str
    image_keys: tuple[str, ...]  # primary first
    proprio_keys: tuple[str, ...] = ("state",)  # "key" or "key[a:b]"; concatenated
    action_key: str = "action"
    language_key: str = "language_instruction"
    action_standardization: str = "none"
    aliases: tuple[str, ...] = ()
    directory: str | None = None  # default: name, then the aliases
    version: str | None = None
    annotated: bool = False  # resolved through a `_latent` name
    from_pattern: bool = False  # not registered; matched a name pattern (aloha_*, metaworld_*, libero_*)
    format: str | None = None  # rlds | lerobot; None: detected from the directory (meta/info.json = lerobot)

    @property
    def platform(self) -> Platform:
        return get_platform(self.platform_name)

    @property
    def directories(self) -> tuple[str, ...]:
        base = (self.directory,) if self.directory else (self.name, *self.aliases)
        return tuple(d + LATENT_SUFFIX for d in base) if self.annotated else base

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform_name, "image_keys": list(self.image_keys),
                "proprio_keys": list(self.proprio_keys), "action_key": self.action_key,
                "language_key": self.language_key,
                "action_standardization": self.action_standardization, "aliases": list(self.aliases),
                "directory": self.directory, "version": self.version, "annotated": self.annotated,
                "format": self.format}


@dataclass(frozen=True)
class ResolvedDataset:
    entry: DatasetEntry
    path: Path  # <root>/<dir>/<version>
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.entry.name


LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
ROBOTWIN_TASKS = ("move_can_pot", "lift_pot", "click_bell", "open_laptop", "place_bread_basket", "beat_block_hammer",
                  "handover_block", "stack_blocks_two", "place_empty_cup", "put_bottles_dustbin", "adjust_bottle",
                  "press_stapler")
JAKA_DATASETS = ("2_bowls", "3_bowls", "4_bowls", "wipe")


def _libero(suite: str) -> DatasetEntry:
    return DatasetEntry(f"{suite}_no_noops", "libero", ("image", "wrist_image"), ("state[:6]", "state[-2:]"),
                        action_standardization="libero_gripper", aliases=(suite,))


def _libero_like(name: str) -> DatasetEntry:
    """Any other `libero_*` directory (e.g. a custom LIBERO suite) in the public release layout."""
    base = name[: -len("_no_noops")] if name.endswith("_no_noops") else name
    return replace(_libero(base), name=name, aliases=(base if base != name else f"{name}_no_noops",))


def _aloha(name: str) -> DatasetEntry:
    return DatasetEntry(name, "aloha", ("image", "left_wrist_image", "right_wrist_image"), ("state",))


def _jaka(name: str) -> DatasetEntry:
    return DatasetEntry(name, "jaka", ("head_camera_image", "low_cam_image"), ("state",))


def _metaworld(name: str) -> DatasetEntry:
    return DatasetEntry(name, "metaworld", ("image", "wrist_image"), ("state",))


BUILTIN_ENTRIES: tuple[DatasetEntry, ...] = (
    *(_libero(s) for s in LIBERO_SUITES),
    *(_aloha(f"aloha_{t}") for t in ROBOTWIN_TASKS),
    *(_jaka(n) for n in JAKA_DATASETS),
    _metaworld("metaworld"),
)
BUILTIN_MIXTURES: dict[str, tuple[tuple[str, float], ...]] = {
    "jaka": tuple((n, 1.0) for n in JAKA_DATASETS),
    "robotwin": tuple((f"aloha_{t}", 1.0) for t in ROBOTWIN_TASKS),
    "libero_4_task_suites": tuple((f"{s}_no_noops", 1.0) for s in LIBERO_SUITES[:4]),
}
# LeRobot `robot_type` -> the layout of an unregistered dataset of that robot (e.g. a LIBERO conversion).
ROBOT_TYPES = {"panda": _libero_like}
# Name patterns that resolve without an explicit entry.
PATTERNS: tuple[tuple[str, Any], ...] = ((r"aloha_[a-z0-9_]+", _aloha), (r"metaworld_[a-z0-9_\-]+", _metaworld),
                                         (r"libero_[a-z0-9_]+", _libero_like))


class Registry:
    """Entries + mixtures (built-ins, then a user file on top)."""

    def __init__(self, registry_file: str | os.PathLike | None = None):
        self.entries: dict[str, DatasetEntry] = {}
        self.mixtures: dict[str, tuple[tuple[str, float], ...]] = dict(BUILTIN_MIXTURES)
        for e in BUILTIN_ENTRIES:
            self.add(e)
        self.source = str(registry_file) if registry_file else None
        if registry_file:
            load_registry_file(self, registry_file)

    def add(self, entry: DatasetEntry, overwrite: bool = False) -> None:
        for n in (entry.name, *entry.aliases):
            if n in self.entries and not overwrite and self.entries[n].name != entry.name:
                raise LatentVLAError(f"dataset name {n!r} is already registered (for {self.entries[n].name!r})")
            self.entries[n] = entry

    def known_names(self) -> list[str]:
        return sorted(set(self.entries) | set(self.mixtures))

    def get(self, name: str) -> DatasetEntry:
        if name in self.entries:
            return self.entries[name]
        if name.endswith(LATENT_SUFFIX) and len(name) > len(LATENT_SUFFIX):
            base = self.get(name[: -len(LATENT_SUFFIX)])
            return replace(base, annotated=True)
        for pattern, make in PATTERNS:
            if re.fullmatch(pattern, name):
                return replace(make(name), from_pattern=True)
        entry = self._from_robot_type(name)
        if entry is not None:
            return entry
        raise LatentVLAError(self.unknown_message(name))

    data_root_dir: str | os.PathLike | None = None  # set by resolve_data_mix: unregistered LeRobot dirs

    def _from_robot_type(self, name: str) -> DatasetEntry | None:
        """An unregistered LeRobot directory `<root>/<name>/` whose `robot_type` has a known layout."""
        if not self.data_root_dir:
            return None
        info = Path(self.data_root_dir) / name / "meta" / "info.json"
        try:
            robot = str(json.loads(info.read_text()).get("robot_type") or "").lower()
        except (OSError, ValueError, AttributeError):
            return None
        make = ROBOT_TYPES.get(robot)
        return replace(make(name), format="lerobot", from_pattern=True) if make else None

    def unknown_message(self, name: str) -> str:
        where = f" (built-ins + {self.source})" if self.source else ""
        return (f"unknown dataset or mixture {name!r}{where}; known: {', '.join(self.known_names())}; "
                f"patterns: libero_<suite>, aloha_<task>, metaworld_<task>, <name>_latent (annotated copy); "
                f"register your own with --dataset_registry FILE")

    def expand(self, data_mix: Any) -> list[tuple[DatasetEntry, float]]:
        items = parse_data_mix(data_mix)
        out: list[tuple[DatasetEntry, float]] = []
        for name, weight in items:
            if name in self.mixtures:
                out.extend((self.get(n), w * weight) for n, w in self.mixtures[name])
            elif name.endswith(LATENT_SUFFIX) and name[: -len(LATENT_SUFFIX)] in self.mixtures:
                out.extend((replace(self.get(n), annotated=True), w * weight)
                           for n, w in self.mixtures[name[: -len(LATENT_SUFFIX)]])
            else:
                out.append((self.get(name), weight))
        seen: dict[tuple[str, bool], int] = {}
        merged: list[tuple[DatasetEntry, float]] = []
        for e, w in out:  # the same dataset twice: weights add
            key = (e.name, e.annotated)
            if key in seen:
                merged[seen[key]] = (e, merged[seen[key]][1] + w)
            else:
                seen[key] = len(merged)
                merged.append((e, w))
        return merged


def parse_data_mix(data_mix: Any) -> list[tuple[str, float]]:
    """'name' | '["a", "b"]' | '[["a", 1.0], ["b", 0.5]]' | a python list -> [(name, weight)]."""
    value = data_mix
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise LatentVLAError("--data_mix is empty; give a dataset or mixture name or a JSON list of names")
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise LatentVLAError(f"--data_mix {data_mix!r}: invalid JSON list ({e})") from None
        else:
            value = [text]
    if not isinstance(value, (list, tuple)) or not value:
        raise LatentVLAError(f"--data_mix {data_mix!r}: expected a name or a non-empty JSON list of names")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append((item, 1.0))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            try:
                w = float(item[1])
            except (TypeError, ValueError):
                raise LatentVLAError(f"--data_mix: weight of {item[0]!r} must be a number, got {item[1]!r}") from None
            if not w > 0:
                raise LatentVLAError(f"--data_mix: weight of {item[0]!r} must be > 0, got {w}")
            out.append((item[0], w))
        else:
            raise LatentVLAError(f"--data_mix: entries must be names or [name, weight] pairs, got {item!r}")
    return out


def _as_tuple(v: Any, field_name: str, source: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise LatentVLAError(f"{source}: {field_name} must be a string or a list of strings, got {v!r}")


def entry_from_dict(d: Mapping, source: str) -> DatasetEntry:
    if not isinstance(d, Mapping):
        raise LatentVLAError(f"{source}: each dataset must be a mapping, got {d!r}")
    missing = [k for k in ("name", "platform", "image_keys") if k not in d]
    if missing:
        raise LatentVLAError(f"{source}: dataset {d.get('name', '?')!r} lacks key(s) {', '.join(missing)}")
    known = {"name", "platform", "image_keys", "proprio_keys", "action_key", "language_key", "action_standardization",
             "aliases", "directory", "version", "format"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise LatentVLAError(f"{source}: dataset {d['name']!r}: unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
    where = f"{source}: dataset {d['name']!r}"
    plat = d["platform"]
    if isinstance(plat, Mapping):
        p = Platform.from_dict(plat, f"{where}: platform")
        register_platform(p)
        plat_name = p.name
    else:
        plat_name = str(plat)
        try:
            get_platform(plat_name)
        except LatentVLAError as e:
            raise LatentVLAError(f"{where}: {e}") from None
    std = str(d.get("action_standardization", "none"))
    if std not in STANDARDIZATIONS:
        raise LatentVLAError(f"{where}: action_standardization must be one of "
                             f"{', '.join(STANDARDIZATIONS)}, got {std!r}")
    fmt = d.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise LatentVLAError(f"{where}: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    proprio = _as_tuple(d.get("proprio_keys", ()), "proprio_keys", where)
    for k in proprio:
        parse_key_slice(k, where)
    return DatasetEntry(
        name=str(d["name"]), platform_name=plat_name, image_keys=_as_tuple(d["image_keys"], "image_keys", where),
        proprio_keys=proprio, action_key=str(d.get("action_key", "action")),
        language_key=str(d.get("language_key", "language_instruction")), action_standardization=std,
        aliases=_as_tuple(d.get("aliases", ()), "aliases", where),
        directory=None if d.get("directory") is None else str(d["directory"]),
        version=None if d.get("version") is None else str(d["version"]), format=fmt)


def load_registry_file(reg: Registry, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.is_file():
        raise LatentVLAError(f"--dataset_registry {path}: file not found")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise LatentVLAError(f"--dataset_registry {path}: cannot parse ({e})") from None
    data = data or {}
    if not isinstance(data, Mapping) or set(data) - {"datasets", "mixtures", "platforms"}:
        raise LatentVLAError(f"--dataset_registry {path}: expected a mapping with keys 'datasets', 'mixtures' "
                             "(optional 'platforms')")
    for p in data.get("platforms") or []:
        register_platform(Platform.from_dict(p, f"{path}: platforms"), overwrite=True)
    datasets = data.get("datasets") or []
    if isinstance(datasets, Mapping):  # {name: {...}} form
        datasets = [{"name": k, **v} for k, v in datasets.items()]
    for d in datasets:
        reg.add(entry_from_dict(d, str(path)), overwrite=True)
    for name, items in (data.get("mixtures") or {}).items():
        parsed = parse_data_mix(items if not isinstance(items, str) else [items])
        for n, _ in parsed:
            reg.get(n)  # fail early on unknown members
        reg.mixtures[str(name)] = tuple(parsed)


_SLICE = re.compile(r"^([^\[\]]+)(?:\[(-?\d*):(-?\d*)\])?$")


def parse_key_slice(spec: str, where: str = "registry") -> tuple[str, slice]:
    """'state[:6]' -> ('state', slice(None, 6)); 'state' -> ('state', slice(None))."""
    m = _SLICE.match(spec.strip())
    if not m:
        raise LatentVLAError(f"{where}: cannot parse key {spec!r}; expected 'key' or 'key[a:b]'")
    a, b = m.group(2), m.group(3)
    return m.group(1), slice(int(a) if a else None, int(b) if b else None)


def detect_format(path: str | os.PathLike) -> str:
    """A directory with `meta/` (where LeRobot keeps `info.json`) is LeRobot; anything else RLDS."""
    return "lerobot" if (Path(path) / "meta").is_dir() else "rlds"


def pick_version(dataset_dir: Path, version: str | None, fmt: str | None = None) -> Path:
    """The version directory of an RLDS dataset; a LeRobot dataset is its own directory (or a
    `version` subdirectory holding meta/)."""
    from latentvla.utils.paths import entry_problem

    if (fmt or detect_format(dataset_dir)) == "lerobot":
        if version is not None and detect_format(dataset_dir / version) == "lerobot":
            return dataset_dir / version
        return dataset_dir  # a missing meta/info.json is reported by the reader, naming the file

    for x in dataset_dir.iterdir():  # a version directory that is a symlink loop / broken link
        if (version is None and re.fullmatch(r"\d+\.\d+\.\d+", x.name) or x.name == version) and \
                (problem := entry_problem(x)) is not None:
            raise LatentVLAError(f"{x}: {problem}")
    if version is not None:
        p = dataset_dir / version
        if not p.is_dir():
            have = sorted(x.name for x in dataset_dir.iterdir() if x.is_dir())
            raise LatentVLAError(f"{p}: version directory not found; {dataset_dir} has: "
                                 f"{', '.join(have) or '(nothing)'}")
        return p
    versions = [x for x in dataset_dir.iterdir() if x.is_dir() and re.fullmatch(r"\d+\.\d+\.\d+", x.name)]
    if not versions:
        raise LatentVLAError(f"{dataset_dir}: no version directory (expected e.g. {dataset_dir}/1.0.0/ with "
                             "dataset_info.json)")
    return max(versions, key=lambda x: tuple(int(v) for v in x.name.split(".")))


def find_dataset_dir(data_root_dir: str | os.PathLike, entry: DatasetEntry) -> Path:
    from latentvla.utils.paths import entry_problem

    root = Path(data_root_dir)
    if str(data_root_dir) and (problem := entry_problem(root)) is not None:
        raise LatentVLAError(f"--data_root_dir {str(data_root_dir)!r}: {problem}")
    if not str(data_root_dir) or not root.is_dir():
        raise LatentVLAError(f"--data_root_dir {str(data_root_dir)!r}: directory not found")
    for d in entry.directories:
        # A symlink loop / broken link is there but unusable: say so, not "unknown dataset".
        if (problem := entry_problem(root / d)) is not None:
            raise LatentVLAError(f"dataset {entry.name!r}: {root / d}: {problem}")
        if (root / d).is_dir():
            return pick_version(root / d, entry.version, entry.format)
    raise LatentVLAError(f"dataset {entry.name!r}{' (annotated)' if entry.annotated else ''}: no directory "
                         f"{' or '.join(repr(d) for d in entry.directories)} under {root}")


def resolve_data_mix(data_root_dir: str | os.PathLike, data_mix: Any,
                     registry_file: str | os.PathLike | None = None) -> list[ResolvedDataset]:
    """Resolve `--data_mix` to builder directories with relative weights."""
    reg = Registry(registry_file)
    reg.data_root_dir = data_root_dir
    out = []
    for entry, weight in reg.expand(data_mix):
        try:
            path = find_dataset_dir(data_root_dir, entry)
        except LatentVLAError as e:
            if entry.from_pattern and "no directory" in str(e):  # probably a typo, not a new task
                raise LatentVLAError(f"{reg.unknown_message(entry.name)} (and no directory "
                                     f"{' or '.join(repr(d) for d in entry.directories)} under "
                                     f"{data_root_dir})") from None
            raise
        out.append(ResolvedDataset(entry, path, weight))
    return out


def get_entry(name: str, registry_file: str | os.PathLike | None = None) -> DatasetEntry:
    return Registry(registry_file).get(name)


def latent_sibling_path(path: Path) -> Path:
    """Where `latentvla lam annotate` puts the labelled copy: `<dir>_latent/<version>` (LeRobot: `<dir>_latent`)."""
    if detect_format(path) == "lerobot":  # no version level
        return path.parent / (path.name + LATENT_SUFFIX)
    return path.parent.parent / (path.parent.name + LATENT_SUFFIX) / path.name


def latent_sibling(resolved: ResolvedDataset) -> ResolvedDataset | None:
    """The annotated copy (`latent_sibling_path`) next to a plain dataset, if it exists."""
    if resolved.entry.annotated:
        return None
    cand = latent_sibling_path(resolved.path)
    if cand.is_dir():
        plain = resolved.path if detect_format(resolved.path) == "lerobot" else resolved.path.parent
        return ResolvedDataset(replace(resolved.entry, annotated=True, directory=plain.name), cand, resolved.weight)
    return None
