"""LatentVLA with the tiny Qwen3-VL: every variant's forward/backward on real samples, and tests
against the reference implementation's known pitfalls 1-5 and 7-14 (docs/architecture.md §7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvla.data.dataset import VLADataset
from latentvla.errors import LatentVLAError
from latentvla.robots import get_platform
from latentvla.vla.backbone import ACTION_QUERY, LATENT_QUERY, act_token, la_token
from latentvla.vla.configuration_vla import VLA_IDS, VLAConfig
from latentvla.vla.head import apply_rotary
from latentvla.vla.modeling_vla import LatentVLA
from latentvla.vla.strategies import STRATEGIES, ForwardContext, code_cross_entropy

LIBERO = get_platform("libero")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add contention
    yield
    torch.set_num_threads(n)


def tiny_action_tokenizer(codebook_size=32):
    from latentvla.lam.action_tokenizer import ActionChunkTokenizer, ActionTokenizerModel
    from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig

    torch.manual_seed(0)
    cfg = ActionTokenizerConfig(action_dim=7, chunk_len=8, hidden_dim=32, codebook_size=codebook_size, num_heads=2,
                                ffn_dim=64, decoder_hidden_dim=32)
    return ActionChunkTokenizer(ActionTokenizerModel(cfg))


def make_model(vlm_dir, vla_id="baseline", platform=LIBERO, **kw):
    torch.manual_seed(0)
    kw.setdefault("default_image_size", 64)
    if vla_id == "la_tok":
        kw.setdefault("codebook_size", 32)
    cfg = VLAConfig(vla_id=vla_id, vlm_path=str(vlm_dir), **kw)
    tok = tiny_action_tokenizer(cfg.codebook_size) if vla_id == "la_tok" else None
    return LatentVLA.from_config(cfg, platform, action_tokenizer=tok, device="cpu")


def dataset_for(root, model, **kw):
    keys = model.required_sample_keys()
    mix = "libero_goal_latent" if keys else "libero_goal"  # baseline / la_tok train on unannotated data
    return VLADataset(root, mix, image_size=64, image_aug=False, extra_keys=keys,
                      use_wrist_image=model.cfg.use_wrist_image,
                      use_proprio=model.cfg.use_proprio, progress=False, **kw)


def batch_for(root, model, idx=(0, 5, 13, 20)):
    ds = dataset_for(root, model)
    return model.processor.collate([ds[i] for i in idx])


@pytest.mark.parametrize("vla_id", VLA_IDS)
def test_each_variant_forward_backward_with_defaults(tiny_vlm_dir, vla_data_root, vla_id):
    # pitfalls 1, 2, 4 (reference crashes: undefined instruction map, loss keys a variant lacks, labels
    # required by every variant): default flags, a dataset the tests wrote, unannotated data for baseline/la_tok
    model = make_model(tiny_vlm_dir, vla_id)
    batch = batch_for(vla_data_root, model)
    out = model(batch)
    assert torch.isfinite(out["loss"]) and out["actions"].shape == (4, 8, 7)
    assert out["metrics"]["l1"] > 0
    expected = {"la_align": {"align_loss", "cosine"}, "la_direct": {"ce", "code_acc"}, "la_cond": {"ce", "code_acc"},
                "la_tok": {"ce", "code_acc"}}.get(vla_id, set())
    assert expected <= set(out["metrics"])
    out["loss"].backward()
    named = dict(model.named_parameters())
    unused = [n for n, p in named.items() if p.requires_grad and p.grad is None]
    assert not unused, unused  # DDP without find_unused_parameters needs every trainable parameter used
    assert any("lora_B" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items())
    assert named["action_head.proj.weight"].grad.abs().sum() > 0
    rows = model.token_rows
    assert rows.new_rows.requires_grad and rows.new_rows.grad.abs().sum() > 0
    if vla_id in ("la_direct", "la_cond", "la_tok"):
        assert rows.new_output_rows.grad.abs().sum() > 0  # code output rows are trained
    else:
        assert not rows.new_output_rows.requires_grad
    frozen = [n for n, p in named.items() if not p.requires_grad]
    assert any("embed_tokens.base.weight" in n for n in frozen)


def test_image_lam_variants_fail_early_without_labels(tiny_vlm_dir, vla_data_root):
    for vla_id in ("la_align", "la_direct", "la_cond"):
        model = make_model(tiny_vlm_dir, vla_id)
        ds = VLADataset(vla_data_root, "libero_goal", image_size=64, image_aug=False, progress=False)  # no labels
        batch = model.processor.collate([ds[0], ds[1]])
        with pytest.raises(LatentVLAError, match=f"{vla_id} needs.*latent"):
            model(batch)


def test_unknown_vla_id_is_an_error(tiny_vlm_dir):
    with pytest.raises(LatentVLAError, match="unknown.*baseline, la_align, la_direct, la_cond, la_tok"):
        make_model(tiny_vlm_dir, "la_magic")
    assert set(STRATEGIES) == set(VLA_IDS)


def test_window_size_mismatch_is_clear(tiny_vlm_dir, vla_data_root):
    with pytest.raises(LatentVLAError, match="window_size"):
        VLADataset(vla_data_root, "libero_goal", image_size=64, window_size=10, progress=False)
    model = make_model(tiny_vlm_dir)
    ds = dataset_for(vla_data_root, model)
    s = dict(ds[0])
    s["actions"], s["action_pad"] = np.zeros((10, 7), np.float32), np.zeros(10, bool)
    with pytest.raises(LatentVLAError, match="window_size must equal"):
        model.processor.collate([s])


def test_one_camera_and_no_proprio(tiny_vlm_dir, vla_data_root):
    model = make_model(tiny_vlm_dir, "baseline", use_wrist_image=False, use_proprio=False)
    assert model.proprio_projector is None and model.processor.num_images == 1
    batch = batch_for(vla_data_root, model)
    assert "proprio" not in batch and int(batch["mm_token_type_ids"][0].sum()) == 4  # one 64² image = 4 tokens
    out = model(batch)
    out["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    with pytest.raises(LatentVLAError, match="predicts no codes"):
        model.predict_codes(batch)
    with pytest.raises(LatentVLAError, match="camera"):
        model.processor.collate([{**dataset_for(vla_data_root, make_model(tiny_vlm_dir))[0]}])


def test_num_images_in_input_must_match_the_data_up_front():
    from latentvla.vla.configuration_vla import VLAConfig

    assert VLAConfig(num_images_in_input=2).num_images(2) == 2
    assert VLAConfig(use_wrist_image=False).num_images(3) == 1
    with pytest.raises(LatentVLAError, match="num_images_in_input 3 does not match the 2 "
                                             "camera.*--num_images_in_input 2"):
        VLAConfig(num_images_in_input=3).num_images(2)
    with pytest.raises(LatentVLAError, match="num_images_in_input 2 does not match the 1 "
                                             "camera.*use_wrist_image False"):
        VLAConfig(num_images_in_input=2, use_wrist_image=False).num_images(2)


def test_three_cameras_aloha(tiny_vlm_dir):
    aloha = get_platform("aloha")
    model = make_model(tiny_vlm_dir, "la_cond", platform=aloha)
    rng = np.random.default_rng(0)
    samples = [{"images": rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8), "instruction": "lift the cup",
                "proprio": rng.uniform(-1, 1, 14).astype(np.float32),
                "actions": rng.uniform(-1, 1, (25, 14)).astype(np.float32),
                "action_pad": np.zeros(25, bool), "latent_idx": rng.integers(0, 16, (25, 4))} for _ in range(2)]
    batch = model.processor.collate(samples)
    assert int(batch["mm_token_type_ids"][0].sum()) == 12
    out = model(batch)
    assert out["actions"].shape == (2, 25, 14)
    out["loss"].backward()


def test_padding_and_image_tokens_are_masked(tiny_vlm_dir, vla_data_root):
    # pitfall 8 (the reference split tokens at a fixed 512, unmasked): image states are sliced by token
    # type, padding is masked: a sample's prediction
    # does not depend on what it is batched with (different prompt lengths -> left padding).
    model = make_model(tiny_vlm_dir, "la_direct").eval()
    with torch.no_grad():  # a trained gate: at init (0) the image states would not reach the chunk at all
        for block in model.action_head.blocks:
            block.image_gate.fill_(1.0)
    ds = dataset_for(vla_data_root, model)
    a, b = ds[0], dict(ds[25])
    b["instruction"] = "open the top drawer of the cabinet and then put the bowl inside it carefully"
    alone = model.predict_actions(model.processor.collate([a]))
    together = model.predict_actions(model.processor.collate([a, b]))
    batch = model.processor.collate([a, b])
    assert (batch["attention_mask"][0] == 0).any()  # really padded
    torch.testing.assert_close(alone[0], together[0], atol=1e-4, rtol=1e-4)
    states, mask = model._image_states([torch.arange(batch["input_ids"].numel()).view(*batch["input_ids"].shape, 1)],
                                       [0], batch["mm_token_type_ids"])
    assert mask.sum(1).tolist() == [8, 8]  # 2 cameras x 4 tokens, no fixed 512 split
    ids = batch["input_ids"]
    flat = states[0].squeeze(-1)
    assert bool((ids.view(-1)[flat] == model.ids.image_pad).all())


@pytest.mark.parametrize("rotary", [False, True])
def test_padded_image_slots_carry_no_influence(rotary):
    """pitfall 8 (fixed 512-token split, no mask), head side: samples with different image-token counts
    are padded to the longest; the
    padded slots are masked, so a sample's chunk equals its chunk alone whatever the padding holds."""
    from latentvla.vla.head import ActionHead

    torch.manual_seed(0)
    H, P, D, L, T = 32, 8, 7, 2, 12
    head = ActionHead(L, H, H, 4, P, D, rotary=rotary).eval()
    with torch.no_grad():  # a trained gate: at init (0) the image attention would not count at all
        for block in head.blocks:
            block.image_gate.fill_(1.0)
    mm = torch.zeros(2, T, dtype=torch.long)  # 8 and 5 image tokens, at different positions
    mm[0, 2:10] = 1
    mm[1, [1, 3, 4, 8, 11]] = 1
    hs = [torch.randn(2, T, H) for _ in range(L)]
    img, mask = LatentVLA._image_states(hs, list(range(L)), mm)
    assert mask.sum(1).tolist() == [8, 5] and img[0].shape == (2, 8, H)
    torch.testing.assert_close(img[1][1, :5], hs[1][1, [1, 3, 4, 8, 11]])
    queries = [torch.randn(2, P, H) for _ in range(L)]
    proprio = torch.randn(2, 1, H)
    with torch.no_grad():
        out = head(queries, img, mask, proprio)
        alone = head([q[1:] for q in queries], [s[1:, :5] for s in img], mask[1:, :5], proprio[1:])
        torch.testing.assert_close(out[1], alone[0], atol=1e-5, rtol=1e-5)
        # whatever the padded slots hold (here: large noise) does not reach the chunk ...
        noisy = [torch.where(mask[..., None], s, 100 * torch.randn_like(s)) for s in img]
        torch.testing.assert_close(head(queries, noisy, mask, proprio), out, atol=1e-5, rtol=1e-5)
        # ... though unmasked it would (so the checks above can fail), and the real image tokens do count
        assert (head(queries, noisy, torch.ones_like(mask), proprio)[1] - out[1]).abs().max() > 1e-2
        moved = [s.clone() for s in img]
        moved[0][1, 0] = 3 * torch.randn(H)  # (not a constant shift: the head's LayerNorm removes those)
        assert (head(queries, moved, mask, proprio)[1] - out[1]).abs().max() > 1e-3


def test_no_full_vocabulary_logits(tiny_vlm_dir, vla_data_root):
    from torch.utils._python_dispatch import TorchDispatchMode

    vocab = 512  # the tiny backbone's vocab_size (lm_head rows)
    for vla_id in ("la_direct", "la_tok"):
        model = make_model(tiny_vlm_dir, vla_id)
        assert model.backbone.config.text_config.vocab_size == vocab
        calls = []
        model.backbone.lm_head.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        batch = batch_for(vla_data_root, model)
        # Patchify outside the mode: the 1536-wide patch rows are preprocessing, not logits.
        batch["pixel_values"] = model.processor.image_processor.pixel_values_from_images(batch.pop("images"))

        class NoVocabSizedOutputs(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[-1] >= vocab:
                        raise AssertionError(f"{func} produced a vocabulary-sized tensor {tuple(t.shape)}")
                return out

        with NoVocabSizedOutputs():
            out = model(batch)
            out["loss"].backward()
        assert not calls, "lm_head was applied"


def test_codes_predicted_at_their_own_slots(tiny_vlm_dir):
    # pitfall 12 (labels one position before the slots): the CE gradient reaches exactly the slot
    # positions (no causal shift)
    model = make_model(tiny_vlm_dir, "la_tok")
    ids = torch.tensor([[5, 6, 7] + [model.ids.latent_query] * 8, [5] * 3 + [model.ids.latent_query] * 8])
    L = ids.shape[1]
    hidden = torch.randn(2, L, 64, requires_grad=True)
    ctx = ForwardContext({"input_ids": ids}, (hidden,), [0], model.ids, model.token_rows)
    labels = torch.randint(0, 32, (2, 8))
    ce, m = code_cross_entropy(ctx, model.ids.latent_query, model.ids.la, labels, torch.ones(2, 8, dtype=torch.bool))
    ce.backward()
    touched = hidden.grad.abs().sum(-1) > 0
    assert touched[:, 3:].all() and not touched[:, :3].any()
    # the j-th slot carries the j-th label: with output rows = one-hot directions, logits follow the slot state
    with torch.no_grad():
        rows = model.token_rows.new_output_rows
        la0 = model.ids.la[0] - model.token_rows.first_new
        rows[la0:la0 + 32] = torch.eye(32, 64) * 50
        h = torch.zeros(2, L, 64)
        h[:, 3:, :32] = torch.eye(32)[labels]  # slot j points at label j
    ctx = ForwardContext({"input_ids": ids}, (h,), [0], model.ids, model.token_rows)
    _, m = code_cross_entropy(ctx, model.ids.latent_query, model.ids.la, labels, torch.ones(2, 8, dtype=torch.bool))
    assert m["code_acc"] == 1.0
    # all logits equal (the new rows' mean initialisation): ties are not correct predictions
    with torch.no_grad():
        rows[la0:la0 + 32] = rows[la0]
    _, m = code_cross_entropy(ctx, model.ids.latent_query, model.ids.la, torch.zeros_like(labels),
                              torch.ones(2, 8, dtype=torch.bool))
    assert m["code_acc"] == 0.0


def test_new_tokens_are_dedicated_and_mean_initialised(tiny_vlm_dir):
    # pitfalls 13, 14: new code tokens get trained, mean-initialised rows, and are found by their own ids
    # (not by an emoji merge or a hard-coded id range)
    model = make_model(tiny_vlm_dir, "la_direct")
    tok = model.processor.tokenizer
    for t, i in [(ACTION_QUERY, model.ids.action_query), (LATENT_QUERY, model.ids.latent_query),
                 (act_token(3), model.ids.act[3]), (la_token(255), model.ids.la[255])]:
        assert tok.encode(t, add_special_tokens=False) == [i]
    rows = model.token_rows
    base = rows.base.weight[: rows.first_new]
    torch.testing.assert_close(rows.new_rows.detach(), base.mean(0).expand_as(rows.new_rows))
    torch.testing.assert_close(rows.new_output_rows.detach(),
                               model.backbone.lm_head.weight[: rows.first_new].mean(0).expand_as(rows.new_rows))
    emb = model.backbone.model.language_model.embed_tokens(torch.tensor([[model.ids.act[0], 5]]))
    torch.testing.assert_close(emb[0, 0], rows.new_rows[model.ids.act[0] - rows.first_new])
    torch.testing.assert_close(emb[0, 1], rows.base.weight[5])
    assert rows.num_embeddings == len(tok)


def test_la_direct_pools_over_the_code_axis(tiny_vlm_dir):
    # pitfall 11 (pooling over the chunk axis): P pooled vectors, each from the C codes of its own step
    model = make_model(tiny_vlm_dir, "la_direct")
    P, C = 8, 4
    ids = torch.tensor([[1, 2] + [model.ids.latent_query] * (P * C)])
    step_vecs = torch.randn(P, 64)
    hidden = torch.cat([torch.zeros(1, 2, 64), step_vecs.repeat_interleave(C, 0).unsqueeze(0)], 1)
    ctx = ForwardContext({"input_ids": ids}, (hidden,), [0], model.ids, model.token_rows)
    (pooled,) = model.strategy.head_query_states(ctx)
    assert pooled.shape == (1, P, 64)
    torch.testing.assert_close(pooled[0], step_vecs, atol=1e-5, rtol=1e-5)


def test_rotary_is_a_rotation():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    pos = torch.arange(5)
    rq = apply_rotary(q, pos)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    d1 = (apply_rotary(q, pos) * apply_rotary(k, pos + 2)).sum(-1)
    d2 = (apply_rotary(q, pos + 7) * apply_rotary(k, pos + 9)).sum(-1)  # same relative offset
    torch.testing.assert_close(d1, d2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(apply_rotary(q, torch.zeros(5, dtype=torch.long)), q)


def test_pro_version_and_gradient_checkpointing(tiny_vlm_dir, vla_data_root):
    model = make_model(tiny_vlm_dir, "la_cond", use_pro_version=True, gradient_checkpointing=True)
    assert model.action_head.blocks[0].rotary
    model.train()
    out = model(batch_for(vla_data_root, model))
    out["loss"].backward()
    assert model.action_head.chunk_queries.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused  # DDP runs without find_unused_parameters


def test_inference_equals_training_forward_in_eval_mode(tiny_vlm_dir, vla_data_root):
    # pitfall 10 (query noise in training only): no train-only noise; one forward serves training and
    # inference
    for vla_id in ("baseline", "la_cond"):
        model = make_model(tiny_vlm_dir, vla_id)
        batch = batch_for(vla_data_root, model)
        model.train()
        a1, a2 = model(batch)["actions"], model(batch)["actions"]
        torch.testing.assert_close(a1, a2)
        model.eval()
        with torch.no_grad():
            train_fwd = model(batch)["actions"]
        torch.testing.assert_close(model.predict_actions(batch), train_fwd, atol=0, rtol=0)


def test_trainable_state_round_trip_and_merged_export(tiny_vlm_dir, vla_data_root):
    from transformers import Qwen3VLForConditionalGeneration

    model = make_model(tiny_vlm_dir, "la_tok")
    sd = model.trainable_state_dict()
    assert sd and all("lora_" in k or k.startswith(("action_head", "proprio_projector", "strategy")) or "new_" in k
                      for k in sd)
    assert not any("base_layer" in k for k in sd)
    with torch.no_grad():
        for p in model.action_head.parameters():
            p.add_(0.1)
    other = make_model(tiny_vlm_dir, "la_tok")
    other.load_trainable_state_dict(model.trainable_state_dict())
    batch = batch_for(vla_data_root, model)
    torch.testing.assert_close(other.eval().predict_actions(batch), model.eval().predict_actions(batch))
    with pytest.raises(LatentVLAError, match="do not match"):
        make_model(tiny_vlm_dir, "baseline", use_proprio=False).load_trainable_state_dict(sd)
    merged = model.merged_state_dict()
    hf = Qwen3VLForConditionalGeneration.from_pretrained(tiny_vlm_dir)
    hf.resize_token_embeddings(merged["backbone.model.language_model.embed_tokens.weight"].shape[0])
    missing, unexpected = hf.load_state_dict({k[len("backbone."):]: v
                                              for k, v in merged.items() if k.startswith("backbone.")},
                                             strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}


def test_la_tok_needs_tokenizer_for_training_only(tiny_vlm_dir, vla_data_root):
    cfg = VLAConfig(vla_id="la_tok", vlm_path=str(tiny_vlm_dir), default_image_size=64, codebook_size=32)
    model = LatentVLA.from_config(cfg, LIBERO, device="cpu")
    batch = batch_for(vla_data_root, model)
    with pytest.raises(LatentVLAError, match="action tokenizer"):
        model(batch)
    assert model.predict_actions(batch).shape == (4, 8, 7)
    with pytest.raises(LatentVLAError, match="codebook size"):
        model.set_action_tokenizer(tiny_action_tokenizer(16))


def test_bad_backbone_dir(tmp_path):
    with pytest.raises(LatentVLAError, match="vlm_path"):
        LatentVLA.from_config(VLAConfig(vlm_path=str(tmp_path / "nope")), LIBERO)
    with pytest.raises(LatentVLAError, match="config.json"):
        LatentVLA.from_config(VLAConfig(vlm_path=str(tmp_path)), LIBERO)
    with pytest.raises(LatentVLAError, match="multiple of 32"):
        VLAConfig(default_image_size=100).validate()


def test_collate_errors_are_clear(tiny_vlm_dir, vla_data_root):
    model = make_model(tiny_vlm_dir)
    ds = dataset_for(vla_data_root, model)
    s = dict(ds[0])
    with pytest.raises(LatentVLAError, match="empty"):
        model.processor.collate([])
    with pytest.raises(LatentVLAError, match="lacks 'instruction'"):
        model.processor.collate([{k: v for k, v in s.items() if k != "instruction"}])
    with pytest.raises(LatentVLAError, match="NaN"):
        model.processor.collate([{**s, "proprio": np.full(8, np.nan, np.float32)}])
    with pytest.raises(LatentVLAError, match="proprio has 0 dims.*use_proprio=False"):
        model.processor.collate([{**s, "proprio": np.zeros(0, np.float32)}])
    with pytest.raises(LatentVLAError, match="NaN/inf"):
        model.processor.collate([{**s, "actions": np.full((8, 7), np.inf, np.float32)}])
    with pytest.raises(LatentVLAError, match="some samples only"):
        model.processor.collate([s, {k: v for k, v in s.items() if k != "actions"}])
    with pytest.raises(LatentVLAError, match="uint8"):
        model.processor.collate([{**s, "images": s["images"].astype(np.float32)}])
    batch = model.processor.collate([{**s, "images": np.zeros((2, 100, 80, 3), np.uint8)}])  # resized to 64
    assert int(batch["mm_token_type_ids"].sum()) == 8


def test_a_sixth_variant_is_one_strategy_class(tiny_vlm_dir, vla_data_root):
    from latentvla.vla.strategies import BaselineStrategy, register_strategy

    @register_strategy("test_double_slots")
    class DoubleSlots(BaselineStrategy):
        """Two action-query slots per step, the head reads the second of each pair."""

        def slot_ids(self):
            return [self.ids.action_query] * (2 * self.P)

        def head_query_states(self, ctx):
            return [ctx.gather(i, self.ids.action_query, 2 * self.P)[:, 1::2] for i in ctx.head_layer_indexes]

    try:
        model = make_model(tiny_vlm_dir, "test_double_slots")
        batch = batch_for(vla_data_root, model)
        assert int((batch["input_ids"] == model.ids.action_query).sum(1)[0]) == 16
        out = model(batch)
        out["loss"].backward()
        assert out["actions"].shape == (4, 8, 7)
    finally:
        STRATEGIES.pop("test_double_slots", None)


def test_lam_codes_beyond_the_act_vocabulary_name_the_setting(tiny_vlm_dir, vla_data_root):
    """An image LAM with a larger codebook than latent_codebook_size: the error says which setting to change."""
    model = make_model(tiny_vlm_dir, "la_direct", latent_codebook_size=8)
    batch = batch_for(vla_data_root, model, idx=(0, 5))
    batch["latent_idx"] = batch["latent_idx"].clone().clamp(max=7)
    batch["latent_idx"][0, 0, 0] = 12
    with pytest.raises(LatentVLAError, match="codes up to 12 but the VLA has 8 <ACT> tokens.*latent_codebook_size"):
        model(batch)
