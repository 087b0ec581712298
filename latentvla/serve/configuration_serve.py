"""Options of `latentvla serve` (light module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from latentvla.config import arg
from latentvla.errors import LatentVLAError


@dataclass
class ServeConfig:
    """Serve a policy over a websocket with msgpack-encoded numpy arrays (see docs/evaluation.md)."""

    pretrained_checkpoint: str = arg("", "Policy checkpoint directory: a training checkpoint step_<N>/, "
                                     "or a run dir (its newest checkpoint), or a Hugging Face repo id holding one.")
    policy: Literal["vla", "random", "zero"] = arg("vla",
                                                   "vla = the checkpoint; random / zero answer without a "
                                                   "model (for tests).")
    robot: str = arg("libero", "Robot platform of the random / zero policies.")
    host: str = arg("127.0.0.1", "Address to bind; the loopback by default. Use a --token when binding elsewhere.")
    port: int = arg(8000, "TCP port (0 = any free port; the chosen one is printed).")
    token: str | None = arg(None, "Shared token clients must send (default: $LATENTVLA_TOKEN; none = no check).")
    device: str | None = arg(None, "Torch device (default: cuda if available, else cpu).")
    unnorm_key: str | None = arg(None, "Dataset whose statistics un-normalize actions (default: the "
                                       "checkpoint's only one).")
    vlm_path: str | None = arg(None, "Backbone (Qwen3-VL) directory or Hugging Face repo id, when it is "
                                     "no longer where the checkpoint's config.json says.")
    decode_tokens: bool = arg(False, "la_tok only, for analysis: answer with the predicted <LA> codes decoded by the "
                              "action tokenizer (the one the checkpoint records) instead of the action head's chunk.")
    action_tokenizer_ckpt: str | None = arg(None, "With --decode_tokens: the action tokenizer "
                                            "checkpoint, when it is no longer where the checkpoint's config.json says.")
    # bounds: one client must not stall the others (docs/evaluation.md)
    max_message_bytes: int = arg(16 * 2**20, "Largest request frame in bytes (16 MiB: ~20 uint8 512² frames); a larger "
                                 "one closes its connection with code 1009.")
    max_instruction_chars: int = arg(1000, "Longest instruction in characters; longer ones get an error reply.")
    max_prompt_tokens: int = arg(384, "Most tokens the instruction may take in the prompt (the policy's tokenizer); "
                                 "more get an error reply.")
    max_batch_size: int = arg(8, "Requests answered by one batched model call (1 = one at a time).")
    batch_wait_ms: float = arg(2.0, "With several clients connected: how long a request waits for "
                                    "others to batch with.")
    # openpi-client observations (`WebsocketClientPolicy.infer(obs)`): where the inputs are
    openpi_image_keys: list[str] = arg(["observation/image", "observation/wrist_image"],
                                       "openpi observations: image keys, primary camera first (a '/' path reaches "
                                       "into nested maps when no key has that name).")
    openpi_state_key: str = arg("observation/state", "openpi observations: the proprio state key.")
    openpi_prompt_key: str = arg("prompt", "openpi observations: the instruction key.")
    openpi_actions: Literal["auto", "policy", "libero_env"] = arg(
        "auto", "What openpi-layout replies carry: policy = the policy's actions (as latentvla's client gets them); "
        "libero_env = ready for LIBERO's env.step (gripper converted to -1 open / +1 close and binarized, as "
        "`latentvla eval libero` does; openpi's LIBERO example steps the env with them as they come); "
        "auto = libero_env for LIBERO policies, else policy.")

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise LatentVLAError(f"--port must be in 0..65535, got {self.port}")
        if self.decode_tokens and self.policy != "vla":
            raise LatentVLAError("--decode_tokens needs --policy vla with a la_tok checkpoint, got "
                                 f"--policy {self.policy}")
        if self.action_tokenizer_ckpt and not self.decode_tokens:
            raise LatentVLAError("--action_tokenizer_ckpt is only used with --decode_tokens True")
        if self.max_message_bytes < 1024:
            raise LatentVLAError(f"--max_message_bytes must be at least 1024, got {self.max_message_bytes}")
        for flag in ("max_instruction_chars", "max_prompt_tokens", "max_batch_size"):
            if getattr(self, flag) < 1:
                raise LatentVLAError(f"--{flag} must be at least 1, got {getattr(self, flag)}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise LatentVLAError(f"--batch_wait_ms must be in 0..1000, got {self.batch_wait_ms}")
        if not self.openpi_image_keys or not all(k.strip() for k in self.openpi_image_keys):
            raise LatentVLAError(f"--openpi_image_keys needs at least one non-empty key, got {self.openpi_image_keys}")
        if self.policy == "vla" and not self.pretrained_checkpoint:
            raise LatentVLAError("--pretrained_checkpoint DIR is required with --policy vla")
