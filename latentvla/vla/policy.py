"""`VLAPolicy`: a trained checkpoint -> actions in robot units.

    policy = VLAPolicy.from_pretrained(ckpt_dir, unnorm_key=None)
    chunk = policy.predict_action([agent_img, wrist_img], "put the bowl on the plate", proprio)  # [P, D]
    chunks = policy.predict_action(batch_images, [instr_a, instr_b], batch_proprio)           # [B, P, D]
    a = policy.select_action({"images": ..., "instruction": ..., "proprio": ...})             # [D]
    policy.reset()

Raw proprio (robot units) is normalized with the checkpoint's statistics exactly as in training;
predicted actions are un-normalized with them. A checkpoint trained on one dataset picks its
statistics automatically; on a mixture, `unnorm_key` is required and must be one of the saved
dataset names. One backbone pass + one head pass per chunk; no latent labels, LAM or tokenizer.

`decode_tokens=True` (la_tok only, for analysis; never the default): the chunk comes from the
predicted `<LA>` codes decoded by the action tokenizer the checkpoint was trained with (its
recorded `action_tokenizer_ckpt`, or `action_tokenizer_ckpt=` when that file moved), then
un-normalized exactly like the head's output.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvla.data.transforms import DEFAULT_RESAMPLE, LEGACY_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.robots import normalize, unnormalize
from latentvla.utils.json_files import read_json


def resolve_unnorm_key(statistics: dict, unnorm_key: str | None, where: str = "checkpoint") -> str:
    keys = sorted(statistics)
    if not keys:
        raise LatentVLAError(f"{where}: dataset_statistics.json is empty")
    if unnorm_key is None:
        if len(keys) == 1:
            return keys[0]
        raise LatentVLAError(f"{where} was trained on several datasets; pass unnorm_key (--unnorm_key) = one of: "
                             f"{', '.join(keys)}")
    if unnorm_key not in statistics:
        raise LatentVLAError(f"{where}: unnorm_key {unnorm_key!r} not in the saved statistics; available: "
                             f"{', '.join(keys)}")
    return unnorm_key


def load_decode_tokenizer(directory: str | Path, action_tokenizer_ckpt: str | None = None):
    """The action tokenizer for `decode_tokens`, checked against the checkpoint's config.json only
    (no backbone is loaded), so a wrong checkpoint or a missing tokenizer fails in seconds."""
    from latentvla.vla.checkpoint import resolve_policy_dir

    directory = resolve_policy_dir(directory)
    config = read_json(directory / "config.json", missing="not found (not a policy checkpoint written by latentvla?)")
    vla = config.get("vla") if isinstance(config, dict) and isinstance(config.get("vla"), dict) else {}
    vla_id = vla.get("vla_id")
    if vla_id != "la_tok":
        raise LatentVLAError(f"--decode_tokens needs a la_tok checkpoint (its predicted codes are action-tokenizer "
                             f"codes); {directory} has vla_id {vla_id!r}")
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    recorded = train.get("action_tokenizer_ckpt")
    if action_tokenizer_ckpt:
        path, flag = Path(action_tokenizer_ckpt), f"--action_tokenizer_ckpt {action_tokenizer_ckpt}"
        if not path.exists():
            raise LatentVLAError(f"{flag}: not found (expected the tokenizer_step_N.pt {directory} was trained with)")
    elif not recorded:
        raise LatentVLAError(f"{directory / 'config.json'} records no train.action_tokenizer_ckpt; pass "
                             "--action_tokenizer_ckpt PATH (the tokenizer checkpoint this policy was trained with)")
    else:
        path, flag = Path(recorded), f"action tokenizer {recorded} (recorded in {directory / 'config.json'})"
        if not path.exists():
            raise LatentVLAError(f"{directory}: the action tokenizer {recorded!r} recorded in config.json "
                                 "(train.action_tokenizer_ckpt) does not exist here; pass --action_tokenizer_ckpt PATH "
                                 "pointing to the same tokenizer checkpoint")
    from latentvla.lam.action_tokenizer import ActionChunkTokenizer

    try:
        tok = ActionChunkTokenizer.from_checkpoint(path, device="cpu")
        if isinstance(config.get("platform"), dict):  # (a config without one fails in load_policy_model)
            tok.check_platform(config["platform"], where=str(directory))
    except LatentVLAError as e:
        raise LatentVLAError(f"{flag}: {e}") from None
    codebook = vla.get("codebook_size")
    if codebook is not None and int(tok.codebook_size) != int(codebook):
        raise LatentVLAError(f"{flag}: codebook size {tok.codebook_size} != the checkpoint's codebook_size {codebook} "
                             "(not the tokenizer this policy was trained with)")
    return tok


class VLAPolicy:
    def __init__(self, model, statistics: dict, unnorm_key: str | None = None, num_open_loop_steps: int | None = None,
                 where: str = "policy", decode_tokens: bool = False):
        if decode_tokens and (model.cfg.vla_id != "la_tok" or model.action_tokenizer is None):
            raise LatentVLAError(f"{where}: decode_tokens needs a la_tok model with its action tokenizer "
                                 f"(vla_id {model.cfg.vla_id!r}, tokenizer "
                                 f"{'set' if model.action_tokenizer else 'missing'})")
        self.decode_tokens = bool(decode_tokens)
        self.model = model.eval()
        self.platform = model.platform
        self.unnorm_key = resolve_unnorm_key(statistics, unnorm_key, where)
        self.stats = statistics[self.unnorm_key]
        if "action" not in self.stats:
            raise LatentVLAError(f"{where}: statistics of {self.unnorm_key!r} lack 'action'")
        if model.cfg.use_proprio and "proprio" not in self.stats:
            raise LatentVLAError(f"{where}: statistics of {self.unnorm_key!r} lack 'proprio' (the model uses proprio)")
        self.num_open_loop_steps = num_open_loop_steps or self.chunk_len
        if not 1 <= self.num_open_loop_steps <= self.chunk_len:
            raise LatentVLAError(f"num_open_loop_steps must be in [1, {self.chunk_len}], got {num_open_loop_steps}")
        self._queue: deque = deque()
        # How training made images (set by from_pretrained): raw frames get the same resize filter, and
        # the deterministic center crop when training used random crops.
        self.center_crop = False
        self.image_resample = DEFAULT_RESAMPLE

    def prepare_images(self, images: Any) -> list[np.ndarray]:
        """Raw camera frames -> training-size images made exactly as training made them.

        Every frame gets the training pipeline's resize (the checkpoint's image_resample) to the
        training size, plus its deterministic center crop when the checkpoint trained with image_aug
        (random crops) — whatever its size, so a camera that already delivers the training size is
        cropped too. Without the crop, frames already at the training size pass through unchanged.
        """
        from latentvla.data.transforms import center_crop_params, process_image

        size = self.model.processor.image_size
        out = []
        for im in images:
            im = np.asarray(im)
            if im.ndim == 3 and im.dtype == np.uint8 and (self.center_crop or im.shape[:2] != (size, size)):
                im = process_image(im, size, center_crop_params() if self.center_crop else None, self.image_resample)
            out.append(im)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None, unnorm_key: str | None = None,
                        vlm_path: str | None = None, num_open_loop_steps: int | None = None,
                        decode_tokens: bool = False, action_tokenizer_ckpt: str | None = None) -> VLAPolicy:
        from latentvla.utils.hub import resolve_model_path
        from latentvla.vla.checkpoint import load_policy_model

        # either may be a Hugging Face repo id (`org/name[@revision]`): its local snapshot is read
        directory = resolve_model_path(directory, "VLAPolicy.from_pretrained directory")
        if vlm_path:
            vlm_path = str(resolve_model_path(vlm_path, "vlm_path"))
        if action_tokenizer_ckpt and not decode_tokens:
            raise LatentVLAError("--action_tokenizer_ckpt is only used with --decode_tokens True")
        tok = load_decode_tokenizer(directory, action_tokenizer_ckpt) if decode_tokens else None  # before the backbone
        model, config, statistics = load_policy_model(directory, device=device, vlm_path=vlm_path, action_tokenizer=tok)
        if tok is not None:
            tok.to(model.device)
        policy = cls(model, statistics, unnorm_key, num_open_loop_steps, where=str(directory),
                     decode_tokens=decode_tokens)
        train_cfg = config.get("train") if isinstance(config.get("train"), dict) else {}
        policy.center_crop = bool(train_cfg.get("image_aug", False))
        policy.image_resample = str(train_cfg.get("image_resample") or LEGACY_RESAMPLE)
        model.processor.image_resample = policy.image_resample  # its fallback resize of odd-sized frames
        return policy

    @property
    def chunk_len(self) -> int:
        return self.platform.chunk_len

    @property
    def action_dim(self) -> int:
        return self.platform.action_dim

    def normalize_proprio(self, proprio: Any) -> np.ndarray:
        p = np.asarray(proprio, dtype=np.float32)
        if p.shape[-1] != self.platform.proprio_dim:
            raise LatentVLAError(f"proprio has {p.shape[-1]} dims, platform {self.platform.name!r} expects "
                                 f"{self.platform.proprio_dim}")
        return normalize(p, self.stats["proprio"], self.platform.proprio_norm_mask, self.platform.normalization)

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return unnormalize(actions, self.stats["action"], self.platform.action_norm_mask, self.platform.normalization)

    @torch.no_grad()
    def predict_action(self, images: Any, instruction: str | Sequence[str], proprio: Any = None) -> np.ndarray:
        """One chunk [P, D] in robot units (or [B, P, D] when `instruction` is a list)."""
        if images is None or isinstance(images, (str, bytes)):
            raise LatentVLAError(f"predict_action: images must be a list of uint8 HxWx3 camera frames (primary first), "
                                 f"got {type(images).__name__}")
        batched = not isinstance(instruction, str)
        if batched:
            instructions = list(instruction)
            image_sets = list(images)
            proprios = None if proprio is None else list(proprio)
        else:
            instructions, image_sets = [instruction], [images]
            proprios = None if proprio is None else [proprio]
        if len(image_sets) != len(instructions):
            raise LatentVLAError(f"predict_action: {len(image_sets)} image sets for {len(instructions)} instructions")
        if self.model.cfg.use_proprio:
            if proprios is None:
                raise LatentVLAError("predict_action: this policy was trained with proprio; pass proprio")
            proprios = [self.normalize_proprio(p) for p in proprios]
        else:
            proprios = None
        image_sets = [self.prepare_images(ims) for ims in image_sets]
        batch = self.model.processor.build(image_sets, instructions, proprios, where="observation")
        predict = self.model.decode_predicted_tokens if self.decode_tokens else self.model.predict_actions
        actions = predict(batch).float().cpu().numpy()
        out = self.unnormalize_actions(actions)  # both paths give normalized actions
        return out if batched else out[0]

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        for key in ("images", "instruction"):
            if key not in obs:
                raise LatentVLAError(f"observation lacks {key!r} (keys: {sorted(obs)})")
        return self.predict_action(obs["images"], obs["instruction"], obs.get("proprio"))

    def select_action(self, obs: dict) -> np.ndarray:
        """Pop one action from the current chunk; re-plan when `num_open_loop_steps` were executed."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs)
            if chunk.ndim != 2:
                raise LatentVLAError("select_action takes one (unbatched) observation")
            self._queue.extend(chunk[: self.num_open_loop_steps])
        return self._queue.popleft()

    def reset(self) -> None:
        self._queue.clear()
