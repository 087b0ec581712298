"""TFDS feature schemas (`features.json`) as flat specs, both ways.

A `features.json` is a nested tree of FeatureConnectors (FeaturesDict, Dataset, Tensor, Image,
Scalar, Text, ClassLabel). We flatten it to `{path: FeatureSpec}` with paths joined by "/" exactly as
the feature names inside each `tf.train.Example` (`steps/observation/image`,
`episode_metadata/file_path`, ...). `FeatureSpec.in_steps` says the feature is per step (under the
`steps` Dataset) so a record holds T values of it.

Builders: `image_feature(shape, encoding="jpeg")`, `tensor_feature(shape, dtype="float32")`,
`scalar_feature(dtype)`, `text_feature()`; `build_features_json(flat)` makes the nested JSON that
`tfds.builder_from_directory` reads; `extend_features(features, {path: spec})` adds keys to an
existing schema (raw JSON or flat) and returns the flat schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from latentvla.errors import LatentVLAError

_PKG = "tensorflow_datasets.core.features."
CLASS_NAMES = {
    "FeaturesDict": _PKG + "features_dict.FeaturesDict",
    "Dataset": _PKG + "dataset_feature.Dataset",
    "Tensor": _PKG + "tensor_feature.Tensor",
    "Scalar": _PKG + "scalar.Scalar",
    "Image": _PKG + "image_feature.Image",
    "Text": _PKG + "text_feature.Text",
    "ClassLabel": _PKG + "class_label_feature.ClassLabel",
}
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "bool",
          "string")
STEPS = "steps"


@dataclass(frozen=True)
class FeatureSpec:
    """One leaf feature. kind: tensor | scalar | image | text | class_label."""

    kind: str
    shape: tuple[int, ...] = ()
    dtype: str = "float32"
    encoding: str = "none"  # image: jpeg | png; tensor: none
    description: str = ""
    in_steps: bool = False
    num_classes: int | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def storage(self) -> str:
        """Which list of the Example holds it: bytes | float | int64."""
        if self.kind in ("image", "text") or self.dtype == "string":
            return "bytes"
        if self.dtype.startswith("float"):
            return "float"
        return "int64"

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(bool if self.dtype == "bool" else self.dtype)


def image_feature(shape=(256, 256, 3), encoding: str = "jpeg", description: str = "") -> FeatureSpec:
    if encoding not in ("jpeg", "png"):
        raise LatentVLAError(f"image_feature: encoding must be 'jpeg' or 'png', got {encoding!r}")
    return FeatureSpec("image", tuple(int(s) for s in shape), "uint8", encoding, description)


def tensor_feature(shape, dtype: str = "float32", description: str = "") -> FeatureSpec:
    _check_dtype(dtype, "tensor_feature")
    return FeatureSpec("tensor", tuple(int(s) for s in shape), dtype, "none", description)


def scalar_feature(dtype: str = "float32", description: str = "") -> FeatureSpec:
    _check_dtype(dtype, "scalar_feature")
    return FeatureSpec("scalar", (), dtype, "none", description)


def text_feature(description: str = "") -> FeatureSpec:
    return FeatureSpec("text", (), "string", "none", description)


def _check_dtype(dtype: str, where: str) -> None:
    if dtype not in DTYPES:
        raise LatentVLAError(f"{where}: unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")


# ----------------------------------------------------------------------------- parse

def _short_class(node: Mapping, where: str) -> str:
    cls = str(node.get("pythonClassName", ""))
    short = cls.rsplit(".", 1)[-1]
    if short:
        return short
    for key, name in (("featuresDict", "FeaturesDict"), ("sequence", "Dataset"), ("image", "Image"), ("text", "Text"),
                      ("tensor", "Tensor")):
        if key in node:
            return name
    raise LatentVLAError(f"{where}: feature node without pythonClassName")


def _shape(node: Mapping, where: str = "features.json") -> tuple[int, ...]:
    dims = tuple(int(d) for d in (node.get("shape") or {}).get("dimensions", []))
    if any(d < 0 for d in dims):
        raise LatentVLAError(f"{where}: variable-size shape {list(dims)} is not supported (fixed shapes only)")
    return dims


def _dims(shape: Any) -> dict:
    if isinstance(shape, Mapping):
        return {"dimensions": [str(d) for d in shape.get("dimensions", [])]}
    return {"dimensions": [str(-1 if d is None else d) for d in (shape or [])]}


def legacy_to_proto_json(node: Any) -> Any:
    """Convert the pre-4.7 TFDS layout `{"type": "...Class", "content": {...}}` to the current one."""
    if not isinstance(node, Mapping) or "type" not in node or "pythonClassName" in node:
        return node
    cls = str(node["type"])
    short = cls.rsplit(".", 1)[-1]
    content = node.get("content") or {}
    full = CLASS_NAMES.get(short, cls)
    if short == "FeaturesDict":
        feats = content.get("features", content) if isinstance(content, Mapping) else {}
        return {"featuresDict": {"features": {k: legacy_to_proto_json(v) for k, v in feats.items()}},
                "pythonClassName": full}
    if short in ("Dataset", "Sequence"):
        length = content.get("length")
        return {"pythonClassName": full, "sequence": {"feature": legacy_to_proto_json(content.get("feature")),
                                                       "length": str(-1 if length is None else length)}}
    if short == "Image":
        enc = content.get("encoding_format", content.get("encodingFormat")) or "png"
        return {"pythonClassName": full, "image": {"shape": _dims(content.get("shape")),
                                                   "dtype": content.get("dtype", "uint8"), "encodingFormat": enc}}
    if short in ("Tensor", "Scalar"):
        return {"pythonClassName": full, "tensor": {"shape": _dims(content.get("shape")),
                                                    "dtype": content.get("dtype", "float32"),
                                                    "encoding": content.get("encoding", "none")}}
    if short == "Text":
        return {"pythonClassName": full, "text": {}}
    if short == "ClassLabel":
        return {"pythonClassName": full,
                "classLabel": {"numClasses": str(content.get("num_classes", content.get("numClasses", 0)))}}
    return {"pythonClassName": full}


def parse_features_json(data: Mapping, source: str = "features.json") -> dict[str, FeatureSpec]:
    """Flatten a features.json tree into {path: FeatureSpec} (order as in the file).

    Both the current layout (`pythonClassName` + typed sub-message) and the legacy one
    (`{"type": ..., "content": ...}`, TFDS < 4.7) are accepted.
    """
    out: dict[str, FeatureSpec] = {}
    data = legacy_to_proto_json(data)

    def walk(node: Mapping, path: str, in_steps: bool) -> None:
        where = f"{source}: feature {path or '<root>'!r}"
        node = legacy_to_proto_json(node)
        if not isinstance(node, Mapping):
            raise LatentVLAError(f"{where}: expected an object")
        cls = _short_class(node, where)
        desc = str(node.get("description", ""))
        if cls == "FeaturesDict":
            feats = (node.get("featuresDict") or {}).get("features")
            if not isinstance(feats, Mapping):
                raise LatentVLAError(f"{where}: FeaturesDict without 'featuresDict.features'")
            for name, child in feats.items():
                walk(child, f"{path}/{name}" if path else name, in_steps)
        elif cls in ("Dataset", "Sequence"):
            if in_steps:
                raise LatentVLAError(f"{where}: nested Dataset features are not supported")
            inner = (node.get("sequence") or {}).get("feature")
            if inner is None:
                raise LatentVLAError(f"{where}: Dataset without 'sequence.feature'")
            walk(inner, path, True)
        elif cls in ("Tensor", "Scalar"):
            t = node.get("tensor") or {}
            dtype = str(t.get("dtype", "float32"))
            enc = str(t.get("encoding", "none"))
            if enc not in ("none", ""):
                raise LatentVLAError(f"{where}: tensor encoding {enc!r} is not supported (only 'none')")
            _check_dtype(dtype, where)
            out[path] = FeatureSpec("scalar" if cls == "Scalar" else "tensor", _shape(t, where), dtype, "none", desc,
                                    in_steps)
        elif cls == "Image":
            im = node.get("image") or {}
            enc = str(im.get("encodingFormat", "png") or "png")
            # -1 (any size) is fine for images
            shape = tuple(int(d) for d in (im.get("shape") or {}).get("dimensions", []))
            out[path] = FeatureSpec("image", shape, str(im.get("dtype", "uint8")), enc, desc, in_steps)
        elif cls == "Text":
            out[path] = FeatureSpec("text", (), "string", "none", desc, in_steps)
        elif cls == "ClassLabel":
            n = (node.get("classLabel") or {}).get("numClasses")
            out[path] = FeatureSpec("class_label", (), "int64", "none", desc, in_steps, None if n is None else int(n))
        else:
            raise LatentVLAError(f"{where}: unsupported feature class {node.get('pythonClassName')!r}")

    walk(data, "", False)
    return out


# ----------------------------------------------------------------------------- build

def _leaf_json(spec: FeatureSpec) -> dict[str, Any]:
    node: dict[str, Any] = {}
    if spec.description:
        node["description"] = spec.description
    shape = {"dimensions": [str(d) for d in spec.shape]} if spec.shape else {}
    if spec.kind == "image":
        node["image"] = {"dtype": spec.dtype, "encodingFormat": spec.encoding, "shape": shape}
        node["pythonClassName"] = CLASS_NAMES["Image"]
    elif spec.kind == "text":
        node["pythonClassName"] = CLASS_NAMES["Text"]
        node["text"] = {}
    elif spec.kind == "class_label":
        node["classLabel"] = {"numClasses": str(spec.num_classes or 0)}
        node["pythonClassName"] = CLASS_NAMES["ClassLabel"]
    else:
        node["pythonClassName"] = CLASS_NAMES["Scalar" if spec.kind == "scalar" else "Tensor"]
        node["tensor"] = {"dtype": spec.dtype, "encoding": "none", "shape": shape}
    return node


def _dict_json(tree: Mapping[str, Any]) -> dict[str, Any]:
    feats = {}
    for name in sorted(tree):
        v = tree[name]
        feats[name] = _dict_json(v) if isinstance(v, dict) else _leaf_json(v)
    return {"featuresDict": {"features": feats}, "pythonClassName": CLASS_NAMES["FeaturesDict"]}


def build_features_json(flat: Mapping[str, FeatureSpec]) -> dict[str, Any]:
    """Nested features.json for flat specs; keys under `steps/` become the per-step Dataset."""
    top: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    for path, spec in flat.items():
        parts = path.split("/")
        if parts[0] == STEPS:
            tree, parts = steps, parts[1:]
        else:
            tree = top
        if not parts or not all(parts):
            raise LatentVLAError(f"features: invalid feature path {path!r}")
        for p in parts[:-1]:
            nxt = tree.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise LatentVLAError(f"features: {path!r} nests under leaf feature {p!r}")
            tree = nxt
        if parts[-1] in tree:
            raise LatentVLAError(f"features: duplicate feature path {path!r}")
        tree[parts[-1]] = spec
    root = _dict_json(top)
    if steps:
        root["featuresDict"]["features"][STEPS] = {
            "pythonClassName": CLASS_NAMES["Dataset"],
            "sequence": {"feature": _dict_json(steps), "length": "-1"},
        }
        root["featuresDict"]["features"] = dict(sorted(root["featuresDict"]["features"].items()))
    return root


def normalize_flat(flat: Mapping[str, FeatureSpec]) -> dict[str, FeatureSpec]:
    """Set `in_steps` from the path (specs built by the helpers don't know where they go)."""
    return {p: replace(s, in_steps=p.split("/")[0] == STEPS) for p, s in flat.items()}


def as_flat(features: Mapping) -> dict[str, FeatureSpec]:
    """Accept a raw features.json dict or a flat {path: FeatureSpec} mapping."""
    if features and all(isinstance(v, FeatureSpec) for v in features.values()):
        return normalize_flat(features)
    return parse_features_json(features)


def extend_features(features: Mapping, new: Mapping[str, FeatureSpec]) -> dict[str, FeatureSpec]:
    """A flat schema = `features` (raw JSON or flat) plus `new` keys (e.g. steps/latent_idx)."""
    flat = as_flat(features)
    for path, spec in new.items():
        if path in flat:
            raise LatentVLAError(f"extend_features: feature {path!r} already exists")
        flat[path] = spec
    return normalize_flat(flat)
