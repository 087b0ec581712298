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
                                     "or a run dir (its newest checkpoint).")
    policy: Literal["vla", "random", "zero"] = arg("vla", "vla = the checkpoint; random / zero answer without a model (for tests).")
    robot: str = arg("libero", "Robot platform of the random / zero policies.")
    host: str = arg("127.0.0.1", "Address to bind; the loopback by default. Use a --token when binding elsewhere.")
    port: int = arg(8000, "TCP port (0 = any free port; the chosen one is printed).")
    token: str | None = arg(None, "Shared token clients must send (default: $LATENTVLA_TOKEN; none = no check).")
    device: str | None = arg(None, "Torch device (default: cuda if available, else cpu).")
    unnorm_key: str | None = arg(None, "Dataset whose statistics un-normalize actions (default: the checkpoint's only one).")
    vlm_path: str | None = arg(None, "Backbone (Qwen3-VL) directory, when it is no longer where the checkpoint's config.json says.")

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise LatentVLAError(f"--port must be in 0..65535, got {self.port}")
        if self.policy == "vla" and not self.pretrained_checkpoint:
            raise LatentVLAError("--pretrained_checkpoint DIR is required with --policy vla")
