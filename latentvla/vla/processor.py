"""Prompt + query slots + collate: sample dicts -> backbone/head inputs (docs/architecture.md §3).

Sequence of one sample (Qwen chat format):
    <|im_start|>user\\n  ( <|vision_start|> N×<|image_pad|> <|vision_end|> ) per camera
    "{instruction}. Predict the next {P} robot actions." <|im_end|>\\n <|im_start|>assistant\\n  SLOTS
SLOTS are the strategy's placeholder tokens (`<|latent_query|>` / `<|action_query|>`) and end the
sequence. Sequences are left-padded; every position is later found from token ids.
Batch keys: input_ids, attention_mask, mm_token_type_ids (1 = image token), images (uint8
[N_images, S, S, 3], sample-major then camera order), image_grid_thw, proprio [B, proprio_dim] (only
with use_proprio), and when present in the samples: actions [B,P,D], action_pad [B,P],
latent_idx [B,P,C], latent_z [B,P,C,Z].
The model turns `images` into the backbone's `pixel_values` on its own device
(`QwenVLImageProcessor.pixel_values_from_images`): patchifying in numpy here cost ~3.5 ms per 224²
image in the DataLoader workers and shipped 8x the bytes. Only a batch whose images differ in size
or need the image processor's resize (direct API use) carries float `pixel_values` made here instead.
The processor holds only picklable state (tokenizer + numbers): DataLoader workers can collate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentvla.data.transforms import DEFAULT_RESAMPLE
from latentvla.errors import LatentVLAError
from latentvla.vla.backbone import SpecialTokenIds
from latentvla.vla.image_processor import QwenVLImageProcessor

OPTIONAL_KEYS = {"actions": torch.float32, "action_pad": torch.bool, "latent_idx": torch.long,
                 "latent_z": torch.float32}


def format_instruction(instruction: str, chunk_len: int) -> str:
    return f"{instruction.strip().lower()}. Predict the next {chunk_len} robot actions."


@dataclass(eq=False, repr=False)
class VLAProcessor:
    tokenizer: Any
    image_processor: QwenVLImageProcessor
    ids: SpecialTokenIds
    slot_ids: Sequence[int]
    chunk_len: int
    num_images: int
    image_size: int
    proprio_dim: int
    use_proprio: bool
    image_resample: str = DEFAULT_RESAMPLE

    def __post_init__(self):
        self.slot_ids = list(self.slot_ids)
        ids, enc = self.ids, lambda s: self.tokenizer.encode(s, add_special_tokens=False)
        self._user = [ids.im_start] + enc("user\n")
        self._turn = [ids.im_end] + enc("\n") + [ids.im_start] + enc("assistant\n")

    # ------------------------------------------------------------------ single sample
    def _images(self, images: Any, where: str) -> list[np.ndarray]:
        arr = [np.asarray(im) for im in images]
        if len(arr) != self.num_images:
            raise LatentVLAError(f"{where}: got {len(arr)} camera image(s), the model expects {self.num_images} "
                                 "(num_images_in_input / use_wrist_image)")
        out = []
        for im in arr:
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
                raise LatentVLAError(f"{where}: images must be uint8 HxWx3, got {im.dtype} {tuple(im.shape)}")
            if im.shape[:2] != (self.image_size, self.image_size):
                # The training pipeline's own resize (`process_image` with the dataset's `resample`), so
                # raw camera frames match training images.
                from latentvla.data.transforms import process_image

                im = process_image(im, self.image_size, resample=self.image_resample)
            out.append(im)
        return out

    def encode(self, images: Any, instruction: str, where: str = "sample") -> tuple[list[int], list[np.ndarray]]:
        """One sample -> (token ids, its checked uint8 camera images in prompt order)."""
        ims = self._images(images, where)
        seq = list(self._user)
        for im in ims:
            n = self.image_processor.num_tokens(*im.shape[:2])
            seq += [self.ids.vision_start] + [self.ids.image_pad] * n + [self.ids.vision_end]
        seq += self.tokenizer.encode(format_instruction(instruction, self.chunk_len), add_special_tokens=False)
        seq += self._turn + self.slot_ids
        return seq, ims

    def vision_inputs(self, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """All images of a batch -> {"images" uint8 [N, H, W, 3], "image_grid_thw"} for the model to
        patchify on its device; {"pixel_values", "image_grid_thw"} (numpy path) when sizes differ or
        need a resize."""
        proc = self.image_processor
        sizes = {im.shape[:2] for im in images}
        if len(sizes) != 1 or not proc.keeps_size(*sizes.pop()):
            return proc(images)
        grid = torch.tensor([proc.grid_thw(*im.shape[:2]) for im in images], dtype=torch.long)
        return {"images": torch.from_numpy(np.stack(images)), "image_grid_thw": grid}

    def _proprio(self, proprio: Any, where: str) -> np.ndarray:
        p = np.asarray(proprio if proprio is not None else [], dtype=np.float32).reshape(-1)
        if p.shape[0] != self.proprio_dim:
            raise LatentVLAError(f"{where}: proprio has {p.shape[0]} dims, the platform expects {self.proprio_dim} "
                                 "(pass use_proprio=False to train without it)")
        if not np.isfinite(p).all():
            raise LatentVLAError(f"{where}: proprio contains NaN/inf")
        return p

    # ------------------------------------------------------------------ batch
    def build(self, images: Sequence[Any], instructions: Sequence[str], proprio: Sequence[Any] | None = None,
              where: str = "batch") -> dict[str, torch.Tensor]:
        seqs, all_images = [], []
        for i, (ims, instr) in enumerate(zip(images, instructions, strict=False)):
            s, checked = self.encode(ims, instr, where=f"{where}[{i}]")
            seqs.append(s)
            all_images += checked
        length = max(len(s) for s in seqs)
        B = len(seqs)
        input_ids = torch.full((B, length), self.ids.pad, dtype=torch.long)
        attention = torch.zeros((B, length), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: the slots end every row
            input_ids[i, length - len(s):] = torch.tensor(s)
            attention[i, length - len(s):] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "mm_token_type_ids": (input_ids == self.ids.image_pad).long() * attention,
            **self.vision_inputs(all_images),
        }
        if self.use_proprio:
            if proprio is None:
                raise LatentVLAError(f"{where}: the model uses proprio but none was given")
            batch["proprio"] = torch.from_numpy(np.stack([self._proprio(p, f"{where}[{i}]")
                                                          for i, p in enumerate(proprio)]))
        return batch

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        if not samples:
            raise LatentVLAError("collate: empty list of samples")
        for i, s in enumerate(samples):
            for key in ("images", "instruction"):
                if key not in s:
                    raise LatentVLAError(f"sample[{i}] lacks {key!r} (keys: {sorted(s)})")
        batch = self.build([s["images"] for s in samples], [s["instruction"] for s in samples],
                           [s.get("proprio") for s in samples] if self.use_proprio else None, where="sample")
        for key, dtype in OPTIONAL_KEYS.items():
            present = [key in s for s in samples]
            if any(present) and not all(present):
                raise LatentVLAError(f"collate: {key!r} present in some samples only")
            if all(present):
                try:
                    batch[key] = torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples])).to(dtype)
                except ValueError as e:
                    raise LatentVLAError(f"collate: samples' {key!r} have different shapes ({e})") from None
        if "actions" in batch:
            a = batch["actions"]
            if a.ndim != 3 or a.shape[1] != self.chunk_len:
                raise LatentVLAError(f"sample 'actions' has shape {tuple(a.shape[1:])}, expected "
                                     f"[{self.chunk_len}, D]: window_size must equal the platform's chunk length")
            if not torch.isfinite(a).all():
                raise LatentVLAError("sample 'actions' contain NaN/inf")
            if "action_pad" not in batch:
                batch["action_pad"] = torch.zeros(a.shape[:2], dtype=torch.bool)
        return batch

    __call__ = collate
