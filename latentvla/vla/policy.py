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

from latentvla.errors import LatentVLAError
from latentvla.utils.json_files import read_json
from latentvla.vla.policy_io import PolicyIO, load_policy_io


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
    """`io` is the checkpoint's `PolicyIO` (how inputs and outputs are made), or its statistics dict
    (the rest of the recipe is then read from the model, without a crop)."""

    def __init__(self, model, io: PolicyIO | dict, unnorm_key: str | None = None,
                 num_open_loop_steps: int | None = None, where: str = "policy", decode_tokens: bool = False):
        if decode_tokens and (model.cfg.vla_id != "la_tok" or model.action_tokenizer is None):
            raise LatentVLAError(f"{where}: decode_tokens needs a la_tok model with its action tokenizer "
                                 f"(vla_id {model.cfg.vla_id!r}, tokenizer "
                                 f"{'set' if model.action_tokenizer else 'missing'})")
        self.decode_tokens = bool(decode_tokens)
        self.model = model.eval()
        self.platform = model.platform
        if not isinstance(io, PolicyIO):
            proc = model.processor
            io = PolicyIO(model.platform, io, proc.image_size, proc.num_images, model.cfg.use_proprio,
                          proc.image_resample, center_crop=False)
        self.io = io.select(unnorm_key, where)
        self.num_open_loop_steps = num_open_loop_steps or self.chunk_len
        if not 1 <= self.num_open_loop_steps <= self.chunk_len:
            raise LatentVLAError(f"num_open_loop_steps must be in [1, {self.chunk_len}], got {num_open_loop_steps}")
        self._queue: deque = deque()

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
        model, _, _ = load_policy_model(directory, device=device, vlm_path=vlm_path, action_tokenizer=tok)
        if tok is not None:
            tok.to(model.device)
        return cls(model, load_policy_io(directory), unnorm_key, num_open_loop_steps, where=str(directory),
                   decode_tokens=decode_tokens)

    # The recipe, as attributes every evaluated / served policy has (eval --center_crop overrides the crop).
    unnorm_key = property(lambda self: self.io.unnorm_key)
    num_images = property(lambda self: self.io.num_images)
    image_size = property(lambda self: self.io.image_size)
    use_proprio = property(lambda self: self.io.use_proprio)
    center_crop = property(lambda self: self.io.center_crop,
                           lambda self, v: setattr(self.io, "center_crop", bool(v)))
    image_resample = property(lambda self: self.io.image_resample,
                              lambda self, v: setattr(self.io, "image_resample", str(v)))

    # batched serving; decode_tokens (analysis: argmax codes) unbatched, so answers never depend on the company
    supports_batch = property(lambda self: not self.decode_tokens)

    chunk_len = property(lambda self: self.platform.chunk_len)
    action_dim = property(lambda self: self.platform.action_dim)

    def prepare_images(self, images: Any) -> list[np.ndarray]:
        return self.io.prepare_images(images)

    @torch.no_grad()
    def predict_action(self, images: Any, instruction: str | Sequence[str], proprio: Any = None) -> np.ndarray:
        """One chunk [P, D] in robot units (or [B, P, D] when `instruction` is a list)."""
        if images is None or isinstance(images, (str, bytes)):
            raise LatentVLAError(f"predict_action: images must be a list of uint8 HxWx3 camera frames (primary first), "
                                 f"got {type(images).__name__}")
        batched = not isinstance(instruction, str)
        instructions, image_sets = (list(instruction), list(images)) if batched else ([instruction], [images])
        if len(image_sets) != len(instructions):
            raise LatentVLAError(f"predict_action: {len(image_sets)} image sets for {len(instructions)} instructions")
        proprios = None
        if self.model.cfg.use_proprio:
            if proprio is None:
                raise LatentVLAError("predict_action: this policy was trained with proprio; pass proprio")
            proprios = [self.io.normalize_proprio(p) for p in (proprio if batched else [proprio])]
        image_sets = [self.prepare_images(ims) for ims in image_sets]
        batch = self.model.processor.build(image_sets, instructions, proprios, where="observation")
        predict = self.model.decode_predicted_tokens if self.decode_tokens else self.model.predict_actions
        actions = predict(batch).float().cpu().numpy()
        out = self.io.unnormalize_actions(actions)  # both paths give normalized actions
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
