"""The VLA: Qwen3-VL backbone + LoRA + new token rows, prompt/slot processor, action head, the five
latent-supervision strategies, policy checkpoints and `VLAPolicy` (see docs/api.md, "VLA").

Modules: configuration_vla (VLAConfig, the strategy registry STRATEGIES), backbone (loading, special tokens, LoRA),
image_processor (Qwen3-VL patchify), processor (prompt + collate), head (action head, rotary),
strategies (baseline, la_align, la_direct, la_cond, la_tok), modeling_vla (LatentVLA),
checkpoint, policy_io (the saved inference recipe), policy; configuration_tiny + tiny
(`latentvla tiny-vlm`). Import-light: nothing heavy is imported here.
"""
