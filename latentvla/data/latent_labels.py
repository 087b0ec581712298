"""Latent-label step keys that the records carry but `features.json` does not declare.

The paper's `latent.py` adds `steps/latent_idx` (a float list: C codes per step) and `steps/latent_z`
(a flat float list: C·Z values per step) to every episode record of the shards it writes and
leaves `features.json` as it was (users had to declare them by hand: docs/architecture.md, known
pitfall 22). Moved into place, such a dataset looks unannotated to a reader that trusts
`features.json` alone.

`find_undeclared_latents(builder)` reads the first record of one shard (cheap; `every_shard=True`
reads the first record of each shard) and derives the declaration the keys need, checking it
against the values. `adopt_undeclared_latents(builder)` adds that declaration to the builder's
in-memory schema, so the index and the datasets read the keys, and prints a notice once per
process; `latentvla data declare-latents DIR` writes it into `features.json` for good.

Sizes, first source that has them: explicit values (declare-latents flags); `latent_annotation.json`
(written by `latentvla lam annotate`); the other latent key if `features.json` declares it; the
record itself (latent_idx values per step give C, latent_z values per step / C give Z); the paper's
defaults C = 4, Z = 128. Codes must be integral and in [0, K), K from `latent_annotation.json`, else
an explicit value, else 16. The declaration keeps the stored list kind (a float list is declared
float32, as TFDS needs to parse it); readers turn codes into int64.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from latentvla.data.example import BYTES, FLOAT, INT64, bytes_list_spans, decode_span, record_context, scan_example
from latentvla.data.features import STEPS, FeatureSpec, build_features_json, legacy_to_proto_json, tensor_feature
from latentvla.data.tfrecord import read_record_at
from latentvla.errors import LatentVLAError

LATENT_IDX = "steps/latent_idx"
LATENT_Z = "steps/latent_z"
LATENT_PATHS = (LATENT_IDX, LATENT_Z)
DEFAULT_NUM_CODES, DEFAULT_LATENT_DIM, DEFAULT_CODEBOOK_SIZE = 4, 128, 16  # the paper's LAM: C, Z, K
ANNOTATION_FILE = "latent_annotation.json"
DESCRIPTIONS = {LATENT_IDX: "Image-LAM task-centric code indices of (t, t+k).",
                LATENT_Z: "Image-LAM task-centric code vectors of (t, t+k)."}
_KIND = {BYTES: "bytes_list", FLOAT: "float_list", INT64: "int64_list"}


@dataclass
class UndeclaredLatents:
    """What the records carry beyond `features.json`, and how to read it."""

    directory: Path
    checked: list[Path]  # shards whose first record was read
    specs: dict[str, FeatureSpec] = field(default_factory=dict)  # the declaration of the latent keys found
    stored: dict[str, str] = field(default_factory=dict)  # path -> list kind in the records
    num_codes: int | None = None
    latent_dim: int | None = None
    codebook_size: int = DEFAULT_CODEBOOK_SIZE
    sources: dict[str, str] = field(default_factory=dict)  # "C" / "Z" / "K" -> where the value came from
    others: list[str] = field(default_factory=list)  # undeclared step keys that are not latent labels
    problem: str | None = None  # why the latent keys cannot be used as they are (with the fix)

    @property
    def usable(self) -> bool:
        return bool(self.specs) and self.problem is None

    def shapes_text(self) -> str:
        parts = []
        for path, spec in self.specs.items():
            extra = f", codes checked integral and in [0, {self.codebook_size})" if path == LATENT_IDX else ""
            parts.append(f"{path[len(STEPS) + 1:]} {spec.dtype} {list(spec.shape)} (stored as "
                         f"{self.stored[path]}{extra})")
        return "; ".join(parts)

    def sizes_text(self) -> str:
        vals = {"C": self.num_codes, "Z": self.latent_dim if LATENT_Z in self.specs else None, "K": self.codebook_size}
        return ", ".join(f"{k} = {v} ({self.sources[k]})"
                         for k, v in vals.items() if v is not None and k in self.sources)

    def notice(self) -> str:
        keys = " and ".join(self.specs)
        return (f"{self.directory}: the records carry {keys} but features.json does not declare "
                f"{'them' if len(self.specs) > 1 else 'it'} (as the paper's latent.py leaves it); reading "
                f"{self.shapes_text()}; {self.sizes_text()}. Declare them once with "
                f"`latentvla data declare-latents {self.directory}` to make this permanent")


def _positive_int(value, what: str, where: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LatentVLAError(f"{where}: {what} must be a positive integer, got {value!r}")
    return value


def annotation_sizes(directory: Path) -> dict[str, int]:
    """num_codes / latent_dim / codebook_size recorded by `latentvla lam annotate`, when present."""
    f = Path(directory) / ANNOTATION_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LatentVLAError(f"{f}: cannot read the annotation record ({e})") from None
    if not isinstance(data, dict):
        raise LatentVLAError(f"{f}: expected a JSON object")
    out = {}
    for key in ("num_codes", "latent_dim", "codebook_size"):
        v = _positive_int(data.get(key), key, f)
        if v is not None:
            out[key] = v
    return out


def _num_steps(specs: Mapping[str, FeatureSpec], data, spans) -> int | None:
    """T of a record, from a declared step feature (numeric first: its count is exact)."""
    steps = [(p, s) for p, s in specs.items() if s.in_steps and p in spans]
    for p, s in steps:
        if s.storage != "bytes":
            return int(np.asarray(decode_span(data, spans[p])).size // s.numel)
    for p, _ in steps:
        if spans[p].kind == BYTES:
            return len(bytes_list_spans(data, spans[p]))
    return None


def _inspect(shard: Path,
             specs: Mapping[str, FeatureSpec]) -> tuple[int | None, dict[str, tuple[int, np.ndarray]], list[str]]:
    """(T, {latent path: (list kind, values)}, other undeclared step keys) of a shard's first record."""
    data = read_record_at(shard, 0)
    with record_context(f"{shard} (record at offset 0)"):
        spans = scan_example(data)
        undeclared = [k for k in spans if k.startswith(STEPS + "/") and k not in specs]
        latents = {k: (spans[k].kind, decode_span(data, spans[k]) if spans[k].kind != BYTES else None)
                   for k in LATENT_PATHS if k in undeclared}
        return _num_steps(specs, data, spans), latents, sorted(k for k in undeclared if k not in LATENT_PATHS)


def _first_records(builder, every_shard: bool) -> list[Path]:
    shards = []
    for split in builder.split_names:
        for shard, n in zip(builder.shard_paths(split), builder.shard_lengths(split), strict=True):
            if n > 0:
                shards.append(shard)
                if not every_shard:
                    return shards
    return shards


def check_codes(values: np.ndarray, codebook_size: int | None, where: str,
                directory: str | os.PathLike = "DIR") -> None:
    """Latent codes stored as floats must be integral indices in [0, K)."""
    v = np.asarray(values).ravel()
    if v.size == 0:
        return
    bad = ~np.isfinite(v) | (v != np.round(v))
    if bad.any():
        raise LatentVLAError(f"{where}: latent_idx holds {float(v[bad][0])!r}, not an integral code index; the labels "
                             "are damaged: re-annotate the dataset (`latentvla lam annotate`)")
    lo, hi = float(v.min()), float(v.max())
    if lo < 0 or codebook_size is not None and hi >= codebook_size:
        raise LatentVLAError(f"{where}: latent_idx holds codes in [{lo:g}, {hi:g}], outside [0, {codebook_size}) "
                             "(codebook size K); if the LAM has a larger codebook, declare the keys with "
                             f"`latentvla data declare-latents {directory} --codebook_size K` and train with "
                             "--latent_codebook_size K")


def find_undeclared_latents(builder, *, every_shard: bool = False, num_codes: int | None = None,
                            latent_dim: int | None = None,
                            codebook_size: int | None = None) -> UndeclaredLatents | None:
    """The undeclared step keys of `builder`'s records (None: there are none).

    Reads the first record of the first non-empty shard (of every shard with `every_shard`). A
    latent key that cannot be used as found sets `problem` to a message that gives the fix.
    """
    directory = Path(builder.path)
    found = UndeclaredLatents(directory, [])
    fix_sizes = f"`latentvla data declare-latents {directory} --num_codes C --latent_dim Z` with the LAM's sizes"
    first: dict[str, tuple[int, int | None]] | None = None  # path -> (list kind, values per step)
    T0 = None
    codes: list[tuple[Path, np.ndarray]] = []  # latent_idx values of each record read
    for shard in _first_records(builder, every_shard):
        T, latents, others = _inspect(shard, builder.specs)
        found.checked.append(shard)
        found.others = sorted(set(found.others) | set(others))
        widths = {k: (kind, None if vals is None or not T else (vals.size // T if vals.size % T == 0 else -1))
                  for k, (kind, vals) in latents.items()}
        if LATENT_IDX in latents and latents[LATENT_IDX][1] is not None:
            codes.append((shard, latents[LATENT_IDX][1]))
        if first is None:
            first, T0 = widths, T
            found.stored = {k: _KIND[kind] for k, (kind, _) in latents.items()}
            continue
        if set(widths) != set(first):
            found.problem = (f"{directory}: the first record of {found.checked[0].name} carries "
                             f"{', '.join(sorted(first)) or 'no latent key'} but that of {shard.name} carries "
                             f"{', '.join(sorted(widths)) or 'none'}; annotate every shard (the paper's latent.py "
                             "annotates one file per run), or the whole dataset with `latentvla lam annotate`")
            return found
        for k, (kind, w) in widths.items():
            if kind != first[k][0] or None not in (w, first[k][1]) and w != first[k][1]:
                found.problem = (f"{directory}: {k} is stored differently in {found.checked[0].name} "
                                 f"({_KIND[first[k][0]]}, {first[k][1]} per step) and {shard.name} "
                                 f"({_KIND[kind]}, {w} per step); re-annotate the dataset")
                return found
    if first is None or not first and not found.others:
        return None
    if not first:
        return found  # only keys that are not latent labels: nothing this module reads

    for k, (kind, w) in first.items():
        if kind == BYTES:
            found.problem = f"{directory}: {k} is stored as a bytes_list; expected numbers. Re-annotate the dataset"
            return found
        if w == -1:
            found.problem = (f"{directory}: {k} in the first record of {found.checked[0].name} holds a number of "
                             f"values that is not a multiple of its {T0} steps; re-annotate the dataset")
            return found
    if LATENT_Z in first and first[LATENT_Z][0] != FLOAT:
        found.problem = f"{directory}: {LATENT_Z} is stored as an int64_list; expected floats. Re-annotate the dataset"
        return found

    # sizes: explicit > latent_annotation.json > the declared counterpart > the record > defaults
    ann = annotation_sizes(directory)
    declared_idx, declared_z = builder.specs.get(LATENT_IDX), builder.specs.get(LATENT_Z)
    w_idx = first.get(LATENT_IDX, (None, None))[1]
    w_z = first.get(LATENT_Z, (None, None))[1]
    C, found.sources["C"] = next((v, s) for v, s in [
        (num_codes, "--num_codes"), (ann.get("num_codes"), ANNOTATION_FILE),
        (declared_idx.shape[0] if declared_idx is not None and declared_idx.shape else None,
         "features.json latent_idx"),
        (declared_z.shape[0] if declared_z is not None and declared_z.shape else None, "features.json latent_z"),
        (w_idx, "latent_idx values per step"), (DEFAULT_NUM_CODES, "default")] if v)
    Z, found.sources["Z"] = next((v, s) for v, s in [
        (latent_dim, "--latent_dim"), (ann.get("latent_dim"), ANNOTATION_FILE),
        (declared_z.shape[-1] if declared_z is not None and declared_z.shape else None, "features.json latent_z"),
        (w_z // C if w_z and w_z % C == 0 else None, "latent_z values per step / C"),
        (DEFAULT_LATENT_DIM, "default")] if v)
    K, found.sources["K"] = next((v, s) for v, s in [
        (codebook_size, "--codebook_size"), (ann.get("codebook_size"), ANNOTATION_FILE),
        (DEFAULT_CODEBOOK_SIZE, "default")] if v)
    found.num_codes, found.latent_dim, found.codebook_size = C, Z, K
    if w_idx is not None and w_idx != C:
        found.problem = (f"{directory}: {LATENT_IDX} holds {w_idx} values per step but C = {C} ({found.sources['C']}); "
                         f"declare the keys with {fix_sizes}")
        return found
    if w_z is not None and w_z != C * Z:
        found.problem = (f"{directory}: {LATENT_Z} holds {w_z} values per step, not C·Z = {C}·{Z} "
                         f"(C from {found.sources['C']}, Z from {found.sources['Z']}); declare the keys "
                         f"with {fix_sizes}")
        return found
    for shard, vals in codes:
        try:
            check_codes(vals, K, f"{directory}: first record of {shard.name}", directory)
        except LatentVLAError as e:
            found.problem = str(e)
            return found
    if LATENT_IDX in first:
        dtype = "float32" if first[LATENT_IDX][0] == FLOAT else "int64"
        found.specs[LATENT_IDX] = tensor_feature((C,), dtype, DESCRIPTIONS[LATENT_IDX])
    if LATENT_Z in first:
        found.specs[LATENT_Z] = tensor_feature((C, Z), "float32", DESCRIPTIONS[LATENT_Z])
    found.specs = {p: replace(s, in_steps=True) for p, s in found.specs.items()}
    return found


_NOTIFIED: set[str] = set()


def adopt_undeclared_latents(builder, *, announce: bool = True) -> UndeclaredLatents | None:
    """Find undeclared latent keys and, when usable, add their declaration to `builder.specs`
    (in memory only) with a notice, once per process and directory (rank 0 only under torchrun)."""
    if all(p in builder.specs for p in LATENT_PATHS):
        return None  # declared: nothing to look for (the common annotated case costs no read)
    if not hasattr(builder, "shard_paths"):
        return None  # a LeRobot directory: its info.json declares every column
    found = find_undeclared_latents(builder)
    if found is None or not found.usable:
        return found
    builder.specs.update(found.specs)
    key = str(Path(builder.path).resolve())
    if announce and key not in _NOTIFIED and os.environ.get("RANK", "0") == "0":
        _NOTIFIED.add(key)
        print(f"note: {found.notice()}")
    return found


# ----------------------------------------------------------------------------- declare-latents

def declare_in_features(features: Mapping, specs: Mapping[str, FeatureSpec]) -> dict:
    """`features` (features.json content) with `specs` added to the per-step features; original
    nodes untouched (a legacy-layout file is converted to the current layout, which TFDS also reads)."""
    out = copy.deepcopy(legacy_to_proto_json(features))
    try:
        node = out["featuresDict"]["features"][STEPS]["sequence"]["feature"]["featuresDict"]
        step = node["features"]
    except (KeyError, TypeError):
        raise LatentVLAError("features.json: no per-step features "
                             "(featuresDict.features.steps.sequence.feature)") from None
    new = build_features_json(dict(specs))["featuresDict"]["features"][STEPS]["sequence"]["feature"]
    new = new["featuresDict"]["features"]
    for name in new:
        if name in step:
            raise LatentVLAError(f"features.json: steps/{name} is already declared")
    step.update(new)
    node["features"] = dict(sorted(step.items()))
    return out


def resolve_version_dir(path: str | os.PathLike) -> Path:
    """A dataset version dir, also given as the dataset dir above it when that holds one version."""
    p = Path(path)
    if not p.is_dir():
        raise LatentVLAError(f"{p}: directory not found (expected a dataset version directory "
                             "<root>/<name>/<version>/)")
    if (p / "dataset_info.json").is_file():
        return p
    versions = sorted(d for d in p.iterdir() if d.is_dir() and (d / "dataset_info.json").is_file())
    if len(versions) == 1:
        return versions[0]
    if not versions:
        raise LatentVLAError(f"{p}: no dataset_info.json here or in a version sub-directory (expected "
                             "<root>/<name>/<version>/ as written by TFDS)")
    raise LatentVLAError(f"{p}: holds several versions ({', '.join(d.name for d in versions)}); name one of them")
