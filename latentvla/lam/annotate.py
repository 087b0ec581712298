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
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from latentvla.data.example import decode_example, encode_example, record_context
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


# ----------------------------------------------------------------------------- record surgery

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _features_payload(record: bytes, where: str) -> bytes:
    """The bytes of the `Features` message of a serialized Example (field 1, whole record)."""
    if not record:
        return b""
    if record[0] != 0x0A:
        raise LatentVLAError(f"{where}: not a tf.train.Example (first tag {record[0]:#x})")
    n, shift, pos = 0, 0, 1
    while True:
        if pos >= len(record):
            raise LatentVLAError(f"{where}: truncated tf.train.Example header")
        b = record[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if pos + n != len(record):
        raise LatentVLAError(f"{where}: tf.train.Example has {len(record) - pos - n} trailing byte(s)")
    return record[pos:]


def append_features(record: bytes, extra: dict, where: str = "record") -> bytes:
    """`record` with `extra` map entries added; original entries are kept byte for byte."""
    body = _features_payload(record, where) + _features_payload(encode_example(extra), "new features")
    return b"\x0a" + _varint(len(body)) + body


# ----------------------------------------------------------------------------- targets

def _resolve_targets(cfg: AnnotateConfig) -> list[tuple[TFDSBuilderDir, str]]:
    """(builder dir, primary image key) of each dataset to annotate."""
    if cfg.dataset_dir:
        return [(TFDSBuilderDir(cfg.dataset_dir), cfg.image_key or DEFAULT_IMAGE_KEY)]
    from latentvla.data.registry import resolve_data_mix

    out = []
    for r in resolve_data_mix(cfg.data_root_dir, cfg.data_mix, cfg.dataset_registry):
        key = cfg.image_key or (_as_step_key(r.entry.image_keys[0]) if r.entry.image_keys else DEFAULT_IMAGE_KEY)
        out.append((TFDSBuilderDir(r.path), key))
    return out


def _as_step_key(key: str) -> str:
    key = key[len("steps/"):] if key.startswith("steps/") else key
    return key if "/" in key else f"observation/{key}"


def default_output_dir(src: TFDSBuilderDir) -> Path:
    return src.path.parent.parent / f"{src.name}_latent" / src.version


# ----------------------------------------------------------------------------- annotation

class Annotator:
    """Streams a shard's records, labelling episodes in groups of about `labeler.batch_size` frames."""

    def __init__(self, labeler):
        self.labeler = labeler
        self.flush_frames = labeler.batch_size

    def annotated_records(self, shard: Path, image_path: str, progress=None) -> Iterator[bytes]:
        """Records of `shard` with latent labels appended, in order."""
        pending: list[tuple[bytes, list[bytes]]] = []
        frames = 0

        def flush():
            labels = self.labeler.label_episodes([imgs for _, imgs in pending])
            for (rec, _), (idx, z) in zip(pending, labels, strict=True):
                yield append_features(rec, {LATENT_IDX: idx.reshape(-1), LATENT_Z: z.reshape(-1)}, str(shard))
                if progress is not None:
                    progress.update(1)

        for offset, rec in iter_records(shard):
            with record_context(f"{shard} (record at offset {offset})"):
                imgs = decode_example(rec, [image_path]).get(image_path)
            if not isinstance(imgs, list):
                raise LatentVLAError(f"{shard} (record at offset {offset}): no image feature {image_path!r} "
                                     "(choose the camera with --image_key)")
            pending.append((rec, imgs))
            frames += len(imgs)
            if frames >= self.flush_frames:
                yield from flush()
                pending, frames = [], 0
        if pending:
            yield from flush()


def _check_source(src: TFDSBuilderDir, image_key: str) -> str:
    image_path = image_key if image_key.startswith("steps/") else f"steps/{image_key}"
    spec = src.specs.get(image_path)
    if spec is None or spec.kind != "image":
        images = [p[len("steps/"):] for p, s in src.specs.items() if s.kind == "image" and p.startswith("steps/")]
        raise LatentVLAError(f"{src.path}/features.json: image key {image_key!r} not found; image features: "
                             f"{', '.join(images) or '(none)'} (choose one with --image_key)")
    for key in (LATENT_IDX, LATENT_Z):
        if key in src.specs:
            raise LatentVLAError(f"{src.path}: already carries {key}; annotate the original dataset instead")
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


def annotate_builder(src: TFDSBuilderDir, out: Path, image_key: str, labeler, *, job: dict,
                     overwrite: bool = False, splits: list[str] | None = None, in_place: bool = False) -> Path:
    out = Path(out)
    same = out.resolve() == src.path.resolve()
    if same != in_place:
        raise LatentVLAError(f"{out}: --in_place writes to the input itself" if in_place else
                             f"{out}: the output must differ from the input (pass --in_place to replace the input)")
    if in_place and splits and set(splits) != set(src.split_names):
        raise LatentVLAError(f"--in_place annotates every split of {src.path}; drop --splits")
    if not overwrite and (is_annotated(out) if in_place else (out / "dataset_info.json").is_file()):
        print(f"{out}: already annotated; skipping (pass --overwrite to redo it)")
        return out
    image_path = _check_source(src, image_key)
    splits = list(splits or src.split_names)
    for s in splits:
        if s not in src.split_names:
            raise LatentVLAError(f"--splits: {src.path} has no split {s!r}; splits: {', '.join(src.split_names)}")
    name = src.name if in_place else out.parent.name
    staging = out.parent / f".{out.name}.annotating"
    job = {**job, "source": str(src.path.resolve()), "image_key": image_path, "splits": splits, "name": name}
    if staging.is_dir():
        try:
            old = json.loads((staging / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != job:
            print(f"{staging}: left by a different annotation job; starting over")
            shutil.rmtree(staging)
        else:
            remove_stale_temps(staging)  # temp files of a killed run's unfinished shard (never a live one's)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_json(staging / JOB_FILE, job)

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
                    offsets = write_records(target, Annotator(labeler).annotated_records(shard, image_path, bar))
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
    if out.exists():
        old = out.parent / f".{out.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
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
        write_records(out_path, Annotator(labeler).annotated_records(shard, image_path, bar))
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
    pending = []
    for src, key in targets:
        out = src.path if cfg.in_place else Path(cfg.output_dir) if cfg.output_dir else default_output_dir(src)
        if not cfg.overwrite and (is_annotated(out) if cfg.in_place else (out / "dataset_info.json").is_file()):
            print(f"{out}: already annotated; skipping (pass --overwrite to redo it)")
        else:
            _check_source(src, key)  # fail before loading the model
            # the staging directory is created beside the output: a read-only disk fails now
            check_writable_dir(out.parent, f"{'--output_dir' if cfg.output_dir else 'annotation output'} "
                                           f"{out}: its directory")
            pending.append((src, key, out))
    if not pending:
        return [s.path if cfg.in_place else Path(cfg.output_dir) if cfg.output_dir else default_output_dir(s)
                for s, _ in targets]
    model, meta = load_image_lam(cfg.lam_ckpt, dino_path=cfg.dino_path, num_heads=cfg.num_heads,
                                 pair_offset=cfg.lam_pair_offset, strict=not cfg.non_strict, with_text_encoder=False)
    labeler = LatentLabeler(model, pair_offset=cfg.pair_offset, batch_size=cfg.batch_size, device=cfg.device,
                            mixed_precision=cfg.mixed_precision, decode_threads=cfg.decode_threads)
    job = {"lam_ckpt": str(Path(meta["source"]).resolve()), "lam_step": meta["step"], "pair_offset": cfg.pair_offset,
           "num_codes": labeler.num_codes, "latent_dim": labeler.latent_dim,
           "codebook_size": int(model.config.codebook_size)}
    try:
        return [annotate_builder(src, out, key, labeler, job=job, overwrite=cfg.overwrite, splits=cfg.splits,
                                 in_place=cfg.in_place) for src, key, out in pending]
    finally:
        labeler.close()
