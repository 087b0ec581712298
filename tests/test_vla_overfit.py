"""Each variant overfits a handful of real samples on CPU (tiny backbone): L1 falls below 30% of its
start, code accuracy rises, and the predicted chunk's steps differ (the reference head gave every
step the same action: docs/architecture.md, known pitfall 9)."""

from __future__ import annotations

import pytest
import torch

from latentvla.data.dataset import VLADataset
from latentvla.robots import get_platform
from latentvla.vla.configuration_vla import VLA_IDS, VLAConfig
from latentvla.vla.modeling_vla import LatentVLA

STEPS = 100


def _tokenizer():
    from latentvla.lam.action_tokenizer import ActionChunkTokenizer, ActionTokenizerModel
    from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig

    torch.manual_seed(1)
    cfg = ActionTokenizerConfig(action_dim=7, chunk_len=8, hidden_dim=32, codebook_size=32, num_heads=2, ffn_dim=64,
                                decoder_hidden_dim=32)
    return ActionChunkTokenizer(ActionTokenizerModel(cfg))


@pytest.mark.parametrize("vla_id", VLA_IDS)
def test_variant_overfits_a_few_samples(tiny_vlm_dir, vla_data_root, vla_id):
    torch.manual_seed(0)
    cfg = VLAConfig(vla_id=vla_id, vlm_path=str(tiny_vlm_dir), default_image_size=64,
                    codebook_size=32 if vla_id == "la_tok" else 256, use_pro_version=(vla_id == "la_align"))
    model = LatentVLA.from_config(cfg, get_platform("libero"),
                                  action_tokenizer=_tokenizer() if vla_id == "la_tok" else None, device="cpu")
    keys = model.required_sample_keys()
    ds = VLADataset(vla_data_root, "libero_goal_latent" if keys else "libero_goal", image_size=64, image_aug=False,
                    extra_keys=keys, progress=False)
    batch = model.processor.collate([ds[i] for i in (0, 4, 14, 24)])
    target = batch["actions"]
    assert (target[:, 0] - target[:, 1]).abs().max() > 0.01  # actions vary within the chunk
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    first = last = None
    for _ in range(STEPS):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or out["metrics"]
        last = out["metrics"]
    assert last["l1"] < 0.3 * first["l1"], (first, last)
    if "code_acc" in last:
        assert last["code_acc"] > first["code_acc"] and last["ce"] < first["ce"]
        codes = model.eval().predict_codes(batch)
        labels = (batch["latent_idx"].flatten(1) if vla_id != "la_tok"
                  else model.action_tokenizer.encode(batch["actions"]))
        assert codes.shape == labels.shape
        assert (codes == labels).float().mean() >= last["code_acc"] - 0.1
        if vla_id == "la_tok":
            assert model.decode_predicted_tokens(batch).shape == (4, 8, 7)
    if "cosine" in last:
        assert last["cosine"] > first["cosine"] + 0.2
    model.eval()
    pred = model.predict_actions(batch)
    step_diff = (pred[:, 1:] - pred[:, :-1]).abs().amax(dim=(1, 2))
    assert bool((step_diff > 0.05).all()), step_diff  # not one action repeated over the chunk
