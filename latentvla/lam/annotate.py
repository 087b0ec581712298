"""`latentvla lam annotate`: write an annotated copy of an RLDS dataset.

For every episode of every split (all shards), step t gets
- `steps/latent_idx` int64 `[C]`: the task-centric code indices of the pair (t, min(t+k, T−1))
- `steps/latent_z` float32 `[C, E]`: the corresponding code vectors
into a new builder directory (default `<root>/<name>_latent/<version>`; `--in_place` replaces the
input once the annotated copy is complete). Every original feature keeps its exact bytes: each
output record is the input record with the two new entries appended to its `Features` map (valid
protobuf; TFDS and our reader parse it as one Example).

Resumable and atomic: shards are written one by one (each atomically) into a hidden staging
directory beside the output, `.<version>.annotating`, together with `annotate_job.json`; a rerun
with the same job skips the shards already there. `features.json` / `dataset_info.json` are
written last and the staging directory is renamed onto the output, so a complete output appears
at once and a partial one is never visible. An existing complete output is skipped unless
`--overwrite`.

LeRobot sources (a directory with `meta/info.json`, v3.0 or v2.1) get a new LeRobot dataset
(default `<root>/<name>_latent`) with the per-frame columns `latent_idx` int64 [C] and `latent_z`
float32 [C, E] declared in `meta/info.json` (`latentvla.data.lerobot` documents the convention)
and the job in `meta/latent_annotation.json`. Data parquet files are rewritten one by one in the
same staging scheme (resumable per file); videos are hard-linked and every other original file
copied, so the input is never modified. `--in_place` is for RLDS only.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from latentvla.data.convert import pick_splits
from latentvla.data.example import append_features, decode_example, record_context
from latentvla.data.features import tensor_feature
from latentvla.data.tfds import DEFAULT_TEMPLATE, TFDSBuilderDir, shard_filename
from latentvla.data.tfrecord import iter_records, write_records
from latentvla.errors import LatentVLAError
from latentvla.lam.configuration_image_lam import AnnotateConfig
from latentvla.utils.atomic import atomic_write_json, remove_stale_temps

LATENT_IDX = "steps/latent_idx"
LATENT_Z = "steps/latent_z"
JOB_FILE = "annotate_job.json"
DEFAULT_IMAGE_KEY = "observation/image"


# ----------------------------------------------------------------------------- targets

def _resolve_targets(cfg: AnnotateConfig) -> list[tuple]:
    """(TFDSBuilderDir or LeRobotDir, primary image key) of each dataset to annotate."""
    from latentvla.data.registry import resolve_data_mix
    from latentvla.data.store import dataset_format, open_dataset_dir

    if cfg.dataset_dir:
        src = open_dataset_dir(cfg.dataset_dir)
        return [(src, cfg.image_key or (DEFAULT_IMAGE_KEY if isinstance(src, TFDSBuilderDir) else ""))]
    out = []
    for r in resolve_data_mix(cfg.data_root_dir, cfg.data_mix, cfg.dataset_registry):
        src, first = open_dataset_dir(r.path, dataset_format(r)), next(iter(r.entry.image_keys), None)
        if isinstance(src, TFDSBuilderDir):
            out.append((src, cfg.image_key or (_as_step_key(first) if first else DEFAULT_IMAGE_KEY)))
        else:
            out.append((src, cfg.image_key or first or ""))
    return out


def _as_step_key(key: str) -> str:
    key = key[len("steps/"):] if key.startswith("steps/") else key
    return key if "/" in key else f"observation/{key}"


def default_output_dir(src) -> Path:
    if not isinstance(src, TFDSBuilderDir):  # LeRobot: a sibling dataset directory
        return src.path.parent / f"{src.path.name}_latent"
    return src.path.parent.parent / f"{src.name}_latent" / src.version


def _check_target(src, out: Path, in_place: bool = False, splits: list[str] | None = None) -> None:
    same = out.resolve() == src.path.resolve()
    if not isinstance(src, TFDSBuilderDir):
        if in_place:
            raise LatentVLAError(f"{src.path}: --in_place is for RLDS datasets; a LeRobot dataset is annotated into "
                                 "a new directory (default <name>_latent beside it, or --output_dir)")
        if same:
            raise LatentVLAError(f"{out}: the output must differ from the input (a LeRobot dataset is annotated "
                                 "into a new directory)")
    elif same != in_place:
        raise LatentVLAError(f"{out}: --in_place writes to the input itself" if in_place else
                             f"{out}: the output must differ from the input (pass --in_place to replace the input)")
    elif in_place and splits and set(splits) != set(src.split_names):
        raise LatentVLAError(f"--in_place annotates every split of {src.path}; drop --splits")


def _skip(src, out: Path, overwrite: bool, in_place: bool = False) -> bool:
    """No --overwrite and `out` holds a finished annotation (for RLDS without --in_place: any dataset)."""
    if isinstance(src, TFDSBuilderDir):
        done = is_annotated(out) if in_place else (out / "dataset_info.json").is_file()
    else:
        done = (out / "meta" / "info.json").is_file()
    if done and not overwrite:
        print(f"{out}: already annotated; skipping (pass --overwrite to redo it)")
    return done and not overwrite


# ----------------------------------------------------------------------------- annotation

def labelled(labeler, episodes: Iterable[tuple[Any, list]]) -> Iterator[tuple[Any, Any, Any]]:
    """(tag, latent_idx, latent_z) of each (tag, frames) in order, labelled in groups of about
    `labeler.batch_size` frames."""
    pending: list[tuple[Any, list]] = []

    def flush():
        labels = labeler.label_episodes([f for _, f in pending])
        return [(tag, idx, z) for (tag, _), (idx, z) in zip(pending, labels, strict=True)]

    for item in episodes:
        pending.append(item)
        if sum(len(f) for _, f in pending) >= labeler.batch_size:
            yield from flush()
            pending.clear()
    if pending:
        yield from flush()


def annotated_records(labeler, shard: Path, image_path: str, progress=None) -> Iterator[bytes]:
    """Records of `shard` with latent labels appended, in order."""

    def episodes():
        for offset, rec in iter_records(shard):
            with record_context(f"{shard} (record at offset {offset})"):
                imgs = decode_example(rec, [image_path]).get(image_path)
            if not isinstance(imgs, list):
                raise LatentVLAError(f"{shard} (record at offset {offset}): no image feature {image_path!r} "
                                     "(choose the camera with --image_key)")
            yield rec, imgs

    for rec, idx, z in labelled(labeler, episodes()):
        yield append_features(rec, {LATENT_IDX: idx.reshape(-1), LATENT_Z: z.reshape(-1)}, str(shard))
        if progress is not None:
            progress.update(1)


def _check_source(src, image_key: str) -> str:
    """The image feature to label (RLDS: its step path; LeRobot: the video feature); an annotated input is refused."""
    rlds = isinstance(src, TFDSBuilderDir)
    for key in (LATENT_IDX, LATENT_Z):
        if key in src.specs:  # LeRobotDir.specs names its columns "steps/<key>" too
            raise LatentVLAError(f"{src.path}: already carries {key if rlds else key[len('steps/'):]}; annotate the "
                                 "original dataset instead")
    if not rlds:
        return _lerobot_image_key(src, image_key)
    image_path = image_key if image_key.startswith("steps/") else f"steps/{image_key}"
    spec = src.specs.get(image_path)
    if spec is None or spec.kind != "image":
        images = [p[len("steps/"):] for p, s in src.specs.items() if s.kind == "image" and p.startswith("steps/")]
        raise LatentVLAError(f"{src.path}/features.json: image key {image_key!r} not found; image features: "
                             f"{', '.join(images) or '(none)'} (choose one with --image_key)")
    from latentvla.data.latent_labels import find_undeclared_latents

    found = find_undeclared_latents(src)  # labels the paper's latent.py wrote without declaring them
    if found is not None and found.stored:
        raise LatentVLAError(f"{src.path}: its records already carry {', '.join(found.stored)} (undeclared in "
                             "features.json, as the paper's latent.py leaves them); use them as they are, declare them "
                             f"with `latentvla data declare-latents {src.path}`, or annotate the original "
                             "dataset instead")
    return image_path


def output_features(src: TFDSBuilderDir, num_codes: int, latent_dim: int) -> dict:
    """The input's features.json with the two new step keys added (original nodes untouched)."""
    from latentvla.data.features import build_features_json

    features = copy.deepcopy(src.features)
    step_node = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]
    step_feats = step_node["features"]
    new = build_features_json({LATENT_IDX: tensor_feature((num_codes,), "int64",
                                                          "Image-LAM task-centric code indices of (t, t+k)."),
                               LATENT_Z: tensor_feature((num_codes, latent_dim), "float32",
                                                        "Image-LAM task-centric code vectors of (t, t+k).")})
    new_steps = new["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    step_feats.update(new_steps)
    step_node["features"] = dict(sorted(step_feats.items()))
    return features


def is_annotated(out: Path) -> bool:
    """`out` is a complete builder dir that carries the latent keys."""
    try:
        return LATENT_IDX in TFDSBuilderDir(out).specs
    except LatentVLAError:
        return False


def _open_staging(staging: Path, job: dict, nested: bool = False) -> None:
    """Resume a staging dir left by the same job (dropping killed writers' temp files), else start it afresh."""
    if staging.is_dir():
        try:
            old = json.loads((staging / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != job:
            print(f"{staging}: left by a different annotation job; starting over")
            shutil.rmtree(staging)
        else:  # temp files of a killed run's unfinished file (never a live one's)
            for d in [staging, *(p for p in staging.rglob("*") if p.is_dir())] if nested else [staging]:
                remove_stale_temps(d)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_json(staging / JOB_FILE, job)


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished staging dir onto `out` (an old `out` is set aside first, then removed)."""
    if out.exists():
        old = out.parent / f".{out.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def annotate_builder(src: TFDSBuilderDir, out: Path, image_key: str, labeler, *, job: dict,
                     overwrite: bool = False, splits: list[str] | None = None, in_place: bool = False) -> Path:
    out = Path(out)
    _check_target(src, out, in_place, splits)
    if _skip(src, out, overwrite, in_place):
        return out
    image_path = _check_source(src, image_key)
    splits = pick_splits(splits, src.split_names, src.path)
    name = src.name if in_place else out.parent.name
    staging = out.parent / f".{out.name}.annotating"
    job = {**job, "source": str(src.path.resolve()), "image_key": image_path, "splits": splits, "name": name}
    _open_staging(staging, job)

    total = sum(src.num_episodes(s) for s in splits)
    info = copy.deepcopy(src.info)
    with tqdm(total=total, desc=f"annotate {src.name}", unit="ep", dynamic_ncols=True) as bar:
        for split_info in info.get("splits", []):
            split = split_info["name"]
            if split not in splits:
                continue
            template = str(split_info.get("filepathTemplate") or DEFAULT_TEMPLATE)
            paths, lengths = src.shard_paths(split), src.shard_lengths(split)
            num_bytes = 0
            for i, (shard, n) in enumerate(zip(paths, lengths, strict=True)):
                target = staging / shard_filename(template, name, split, i, len(paths), src.file_format)
                if target.is_file():  # finished by an earlier run
                    bar.update(n)
                else:
                    offsets = write_records(target, annotated_records(labeler, shard, image_path, bar))
                    if len(offsets) != n:
                        target.unlink()
                        raise LatentVLAError(f"{shard}: holds {len(offsets)} records but dataset_info.json says {n}")
                # TFDS counts serialized example bytes (file size minus 16 bytes of framing per record)
                num_bytes += target.stat().st_size - 16 * n
            split_info["numBytes"] = str(num_bytes)
    info["splits"] = [s for s in info.get("splits", []) if s["name"] in splits]
    info["name"] = name
    if "moduleName" in info:
        info["moduleName"] = f"{name}.{name}_dataset_builder"
    feats = output_features(src, labeler.num_codes, labeler.latent_dim)
    (staging / "features.json").write_text(json.dumps(feats, indent=4, sort_keys=True))
    (staging / "dataset_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (staging / JOB_FILE).rename(staging / "latent_annotation.json")
    _publish(staging, out)
    print(f"wrote {out} ({total} episodes; new keys {LATENT_IDX} {[labeler.num_codes]}, "
          f"{LATENT_Z} {[labeler.num_codes, labeler.latent_dim]})")
    return out


def annotate_shard_file(shard: Path, out_path: Path, labeler, image_key: str = DEFAULT_IMAGE_KEY,
                        overwrite: bool = False) -> Path:
    """Annotate one shard file into `out_path` (the paper's `latent.py FILE.tfrecord` workflow)."""
    shard, out_path = Path(shard), Path(out_path)
    if not shard.is_file():
        raise LatentVLAError(f"{shard}: TFRecord shard not found")
    if out_path.exists() and not overwrite:
        print(f"{out_path}: already annotated; skipping (pass --overwrite to redo it)")
        return out_path
    image_path = image_key if image_key.startswith("steps/") else f"steps/{image_key}"
    if (shard.parent / "features.json").is_file() and (shard.parent / "dataset_info.json").is_file():
        image_path = _check_source(TFDSBuilderDir(shard.parent), image_key)
    with tqdm(desc=f"annotate {shard.name}", unit="ep", dynamic_ncols=True) as bar:
        write_records(out_path, annotated_records(labeler, shard, image_path, bar))
    print(f"wrote {out_path}")
    return out_path


def run_annotate(cfg: AnnotateConfig) -> list[Path]:
    from latentvla.lam.image_lam_checkpoint import load_image_lam
    from latentvla.lam.latent_labeler import LatentLabeler
    from latentvla.utils.hub import resolve_model_flags
    from latentvla.utils.paths import check_writable_dir

    cfg.validate()
    # Hub repo ids -> local snapshots (a UniVLA repo with one .ckpt: that file).
    for name, h in resolve_model_flags(cfg, {"lam_ckpt": (".ckpt",), "dino_path": (".pth", ".pt")}).items():
        print(f"--{name} {h['repo_id']}: Hugging Face snapshot {h['local_path']}")
    targets = _resolve_targets(cfg)
    if cfg.output_dir and len(targets) > 1:
        raise LatentVLAError("--output_dir names one dataset; --data_mix resolved to several (omit --output_dir)")
    outs = [src.path if cfg.in_place else Path(cfg.output_dir) if cfg.output_dir else default_output_dir(src)
            for src, _ in targets]
    pending = []
    for (src, key), out in zip(targets, outs, strict=True):
        if not isinstance(src, TFDSBuilderDir):  # RLDS targets are checked with --splits by annotate_builder
            _check_target(src, out, cfg.in_place)
        if not _skip(src, out, cfg.overwrite, cfg.in_place):
            _check_source(src, key)  # fail before loading the model
            # the staging directory is created beside the output: a read-only disk fails now
            check_writable_dir(out.parent, f"{'--output_dir' if cfg.output_dir else 'annotation output'} "
                                           f"{out}: its directory")
            pending.append((src, key, out))
    if not pending:
        return outs
    model, meta = load_image_lam(cfg.lam_ckpt, dino_path=cfg.dino_path, num_heads=cfg.num_heads,
                                 pair_offset=cfg.lam_pair_offset, strict=not cfg.non_strict, with_text_encoder=False)
    labeler = LatentLabeler(model, pair_offset=cfg.pair_offset, batch_size=cfg.batch_size, device=cfg.device,
                            mixed_precision=cfg.mixed_precision, decode_threads=cfg.decode_threads)
    job = {"lam_ckpt": str(Path(meta["source"]).resolve()), "lam_step": meta["step"], "pair_offset": cfg.pair_offset,
           "num_codes": labeler.num_codes, "latent_dim": labeler.latent_dim,
           "codebook_size": int(model.config.codebook_size)}
    try:
        return [annotate_builder(src, out, key, labeler, job=job, overwrite=cfg.overwrite, splits=cfg.splits,
                                 in_place=cfg.in_place) if isinstance(src, TFDSBuilderDir) else
                annotate_lerobot(src, out, key, labeler, job=job, overwrite=cfg.overwrite)
                for src, key, out in pending]
    finally:
        labeler.close()


# ----------------------------------------------------------------------------- LeRobot

LEROBOT_IDX, LEROBOT_Z = "latent_idx", "latent_z"


def _lerobot_image_key(src, image_key: str) -> str:
    """The video feature to label: `image_key` as given, or `observation.images.<image_key>`; default the first."""
    videos = src.video_keys
    key = image_key or (videos[0] if videos else "")
    if key not in videos and f"observation.images.{key}" in videos:
        key = f"observation.images.{key}"
    if key not in videos:
        raise LatentVLAError(f"{src.info_path}: image key {image_key!r} not found; video features: "
                             f"{', '.join(videos) or '(none)'} (choose one with --image_key)")
    return key


def _positions(src) -> dict[int, tuple[str, int]]:
    """episode_index -> (split, position in it): the reader addresses episodes by split position."""
    out: dict[int, tuple[str, int]] = {}
    for split in src.split_names:
        for i, e in enumerate(src.episode_indices(split)):
            out.setdefault(e, (split, i))
    return out


def _label_episodes(src, episodes: list[int], key: str, labeler, where: dict, bar) -> dict[int, dict]:
    """{episode_index: {latent_idx, latent_z}} for `episodes`."""

    def frames():
        for e in episodes:
            if e not in where:
                raise LatentVLAError(f"{src.info_path}: episode {e} is in no split; cannot address it")
            split, i = where[e]
            yield e, list(src.frames(i, range(int(src.episode_meta(e)["length"])), key, split))

    values = {}
    for e, idx, z in labelled(labeler, frames()):
        values[e] = {LEROBOT_IDX: idx, LEROBOT_Z: z}
        bar.update(1)
    return values


def annotate_lerobot(src, out: Path, image_key: str, labeler, *, job: dict, overwrite: bool = False) -> Path:
    from latentvla.data.lerobot_columns import LeRobotColumnCopy

    out = Path(out)
    _check_target(src, out)
    if _skip(src, out, overwrite):
        return out
    key = _check_source(src, image_key)
    staging = out.parent / f".{out.name}.annotating"
    job = {**job, "source": str(src.path.resolve()), "image_key": key, "format": "lerobot"}
    _open_staging(staging, job, nested=True)
    copy = LeRobotColumnCopy(src, staging, {
        LEROBOT_IDX: {"dtype": "int64", "shape": [labeler.num_codes], "names": None},
        LEROBOT_Z: {"dtype": "float32", "shape": [labeler.num_codes, labeler.latent_dim], "names": None}})
    where = _positions(src)
    total = sum(len(eps) for eps in copy.files.values())
    with tqdm(total=total, desc=f"annotate {src.name}", unit="ep", dynamic_ncols=True) as bar:
        for rel, episodes in copy.files.items():
            if copy.done(rel):  # finished by an earlier run
                bar.update(len(episodes))
                continue
            copy.write_file(rel, _label_episodes(src, episodes, key, labeler, where, bar))
    (staging / JOB_FILE).unlink()
    copy.finish({"latent_annotation.json": job})
    _publish(staging, out)
    print(f"wrote {out} ({total} episodes; new columns {LEROBOT_IDX} {[labeler.num_codes]}, "
          f"{LEROBOT_Z} {[labeler.num_codes, labeler.latent_dim]})")
    return out
