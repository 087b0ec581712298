"""Policy checkpoints (layout: docs/architecture.md §4) and `VLAPolicy`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentvla.data.dataset import VLADataset
from latentvla.errors import LatentVLAError
from latentvla.robots import get_platform, normalize, unnormalize
from latentvla.vla.checkpoint import load_policy_model, save_policy_checkpoint
from latentvla.vla.configuration_vla import VLAConfig
from latentvla.vla.modeling_vla import LatentVLA
from latentvla.vla.policy import VLAPolicy

LIBERO = get_platform("libero")


@pytest.fixture(scope="module")
def trained(tiny_vlm_dir, vla_data_root, tmp_path_factory):
    """A la_tok model trained for a few steps (no tokenizer needed later) and its checkpoint."""
    from latentvla.lam.action_tokenizer import ActionChunkTokenizer, ActionTokenizerModel
    from latentvla.lam.action_tokenizer_checkpoint import save_tokenizer_checkpoint
    from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig

    torch.manual_seed(0)
    tok_model = ActionTokenizerModel(ActionTokenizerConfig(hidden_dim=32, codebook_size=32, num_heads=2, ffn_dim=64,
                                                           decoder_hidden_dim=32))
    tok_path = save_tokenizer_checkpoint(tmp_path_factory.mktemp("tok") / "tokenizer_step_1.pt", tok_model, step=1,
                                         statistics={}, platform=LIBERO.to_dict())
    tok = ActionChunkTokenizer.from_checkpoint(tok_path)  # the real loading path la_tok training uses
    cfg = VLAConfig(vla_id="la_tok", vlm_path=str(tiny_vlm_dir), default_image_size=64, codebook_size=32)
    model = LatentVLA.from_config(cfg, LIBERO, action_tokenizer=tok, device="cpu")
    ds = VLADataset(vla_data_root, "libero_goal", image_size=64, image_aug=False, progress=False)
    batch = model.processor.collate([ds[i] for i in (0, 3, 15)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(5):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    ckpt = tmp_path_factory.mktemp("policy") / "step_5"
    # the train config records the tokenizer as `latentvla train` does (for --decode_tokens)
    save_policy_checkpoint(ckpt, model, {"max_steps": 5, "vla_id": "la_tok", "image_resample": "bicubic",
                                         "action_tokenizer_ckpt": str(tok_path)}, ds.statistics)
    return model.eval(), ckpt, ds


def test_checkpoint_layout_and_reload(trained):
    model, ckpt, ds = trained
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "config.json", "dataset_statistics.json",
                                                "versions.json", "policy_io.json"}
    io = json.loads((ckpt / "policy_io.json").read_text())  # the inference recipe, saved with the weights
    assert (io["image_size"], io["image_resample"], io["center_crop"], io["num_images"]) == (64, "bicubic", False, 2)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["vla"]["vla_id"] == "la_tok" and cfg["platform"]["name"] == "libero" and cfg["train"]["max_steps"] == 5
    size = (ckpt / "model.safetensors").stat().st_size
    assert size < 4 * sum(p.numel() for p in model.parameters() if p.requires_grad) + 100_000  # no frozen backbone
    loaded, _, stats = load_policy_model(ckpt)
    assert stats == ds.statistics
    batch = model.processor.collate([ds[2], ds[7]])
    torch.testing.assert_close(loaded.predict_actions(batch), model.predict_actions(batch))


def test_policy_predicts_robot_units_with_normalized_proprio(trained):
    model, ckpt, ds = trained
    policy = VLAPolicy.from_pretrained(ckpt, device="cpu")
    assert policy.unnorm_key == "libero_goal_no_noops" and policy.chunk_len == 8
    stats = ds.statistics["libero_goal_no_noops"]
    s = ds[6]
    raw_proprio = unnormalize(s["proprio"], stats["proprio"], LIBERO.proprio_norm_mask, LIBERO.normalization)
    chunk = policy.predict_action(list(s["images"]), s["instruction"], raw_proprio)
    assert chunk.shape == (8, 7) and chunk.dtype == np.float32
    # same as the training-path forward on the normalized sample, then un-normalized
    ref = model.predict_actions(model.processor.collate([s]))[0].numpy()
    np.testing.assert_allclose(chunk, unnormalize(ref, stats["action"], LIBERO.action_norm_mask, LIBERO.normalization),
                               atol=1e-4)
    np.testing.assert_allclose(normalize(chunk[:, :6], {k: v[:6] for k, v in stats["action"].items()}, [True] * 6,
                                         LIBERO.normalization), np.clip(ref[:, :6], -1, 1), atol=1e-3)
    # batched == single
    batched = policy.predict_action([list(s["images"]), list(ds[9]["images"])], [s["instruction"], "push the plate"],
                                    [raw_proprio, raw_proprio])
    assert batched.shape == (2, 8, 7)
    np.testing.assert_allclose(batched[0], chunk, atol=1e-4)
    with pytest.raises(LatentVLAError, match="proprio"):
        policy.predict_action(list(s["images"]), s["instruction"], None)
    with pytest.raises(LatentVLAError, match="5 dims.*expects 8"):
        policy.predict_action(list(s["images"]), s["instruction"], np.zeros(5))
    with pytest.raises(LatentVLAError, match="images must be a list.*got NoneType"):
        policy.predict_action(None, s["instruction"], raw_proprio)


def test_select_action_and_reset(trained):
    _, ckpt, ds = trained
    policy = VLAPolicy.from_pretrained(ckpt, device="cpu", num_open_loop_steps=3)
    s = ds[1]
    obs = {"images": s["images"], "instruction": s["instruction"], "proprio": np.zeros(8, np.float32)}
    chunk = policy.predict_action_chunk(obs)
    acts = [policy.select_action(obs) for _ in range(4)]
    np.testing.assert_allclose(np.stack(acts[:3]), chunk[:3], atol=1e-5)
    np.testing.assert_allclose(acts[3], chunk[0], atol=1e-5)  # re-planned after 3 open-loop steps
    policy.reset()
    np.testing.assert_allclose(policy.select_action(obs), chunk[0], atol=1e-5)
    with pytest.raises(LatentVLAError, match="instruction"):
        policy.predict_action_chunk({"images": s["images"]})


def test_unnorm_key_and_version_checks(trained, tmp_path):
    import shutil

    model, ckpt, ds = trained
    mix = tmp_path / "mix"
    shutil.copytree(ckpt, mix)
    stats = ds.statistics["libero_goal_no_noops"]
    (mix / "dataset_statistics.json").write_text(json.dumps({"libero_goal_no_noops": stats,
                                                             "libero_10_no_noops": stats}))
    with pytest.raises(LatentVLAError, match="several datasets.*libero_10_no_noops, libero_goal_no_noops"):
        VLAPolicy.from_pretrained(mix, device="cpu")
    with pytest.raises(LatentVLAError, match="'bridge' not in.*available: libero_10_no_noops"):
        VLAPolicy.from_pretrained(mix, device="cpu", unnorm_key="bridge")
    chosen = VLAPolicy.from_pretrained(mix, device="cpu", unnorm_key="libero_10_no_noops")
    assert chosen.unnorm_key == "libero_10_no_noops"
    versions = json.loads((mix / "versions.json").read_text())
    versions["transformers"] = "4.0.0"
    (mix / "versions.json").write_text(json.dumps(versions))
    with pytest.warns(UserWarning, match="transformers 4.0.0"):
        load_policy_model(mix)


def test_checkpoint_errors(trained, tmp_path):
    _, ckpt, _ = trained
    with pytest.raises(LatentVLAError, match="not found"):
        load_policy_model(tmp_path / "missing")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vla"]["vlm_path"] = str(tmp_path / "moved")
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LatentVLAError, match="pass vlm_path"):
        load_policy_model(bad)
    cfg["vla"]["vlm_path"] = json.loads((ckpt / "config.json").read_text())["vla"]["vlm_path"]
    cfg["vla"]["vla_id"] = "la_direct"  # has pooling weights la_tok lacks
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LatentVLAError, match="do not match"):
        load_policy_model(bad)


def test_recorded_episode_round_trip_in_robot_units(tiny_vlm_dir, vla_data_root, tmp_path):
    """Recorded raw observation -> policy (proprio normalized inside) -> un-normalized chunk -> env
    convention; equals the recorded raw actions, gripper sign included, after overfitting them."""
    from latentvla.data.tfds import TFDSBuilderDir
    from latentvla.eval.transforms import convert_actions_to_env

    torch.manual_seed(0)
    model = LatentVLA.from_config(VLAConfig(vlm_path=str(tiny_vlm_dir), default_image_size=64), LIBERO, device="cpu")
    ds = VLADataset(vla_data_root, "libero_goal", image_size=64, image_aug=False, progress=False)
    idx = [0, 2, 4]  # episode 0, steps 0, 2, 4 (no padding)
    batch = model.processor.collate([ds[i] for i in idx])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(200):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["metrics"]["l1"] < 0.05
    save_policy_checkpoint(tmp_path / "ckpt", model, {}, ds.statistics)
    policy = VLAPolicy.from_pretrained(tmp_path / "ckpt", device="cpu")
    stats = ds.statistics["libero_goal_no_noops"]
    episode = TFDSBuilderDir(ds.resolved[0].path).read_episode(0, keys=["action"])
    for i in idx:
        s = ds[i]
        raw_proprio = unnormalize(s["proprio"], stats["proprio"], LIBERO.proprio_norm_mask, LIBERO.normalization)
        chunk = convert_actions_to_env(policy.predict_action(list(s["images"]), s["instruction"], raw_proprio),
                                       LIBERO.gripper_dim)
        recorded = episode["action"][s["step"]: s["step"] + 8]
        span = np.asarray(stats["action"]["q99"]) - np.asarray(stats["action"]["q01"])
        np.testing.assert_allclose(chunk[:, :6], recorded[:, :6], atol=0.1 * float(span[:6].max()))
        assert np.array_equal(np.sign(chunk[:, 6]), np.sign(recorded[:, 6]))  # -1 open, +1 close


def test_raw_frames_are_prepared_like_training_images(trained, tmp_path):
    """A raw camera frame of another size gets the training resize (and center crop after image_aug)."""
    import shutil

    from latentvla.data.transforms import center_crop_params, process_image

    _, ckpt, ds = trained
    policy = VLAPolicy.from_pretrained(ckpt, device="cpu")
    assert policy.image_resample == "bicubic"  # the checkpoint's train config says so
    legacy = tmp_path / "legacy"  # a checkpoint from before image_resample existed: trained with Lanczos
    shutil.copytree(ckpt, legacy)
    (legacy / "policy_io.json").unlink()  # written since: older checkpoints derive the recipe from config.json
    cfg = json.loads((legacy / "config.json").read_text())
    del cfg["train"]["image_resample"]
    (legacy / "config.json").write_text(json.dumps(cfg))
    assert VLAPolicy.from_pretrained(legacy, device="cpu").image_resample == "lanczos"
    from latentvla.eval.policies import PolicySpec, build_policy  # eval --center_crop overrides the checkpoint

    assert build_policy(PolicySpec(kind="vla", checkpoint=str(ckpt), device="cpu", center_crop=True)).center_crop
    assert not build_policy(PolicySpec(kind="vla", checkpoint=str(ckpt), device="cpu")).center_crop
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    proprio = np.zeros(8, np.float32)
    for crop, resample in ((False, "bicubic"), (True, "bicubic"), (True, "lanczos")):
        policy.center_crop, policy.image_resample = crop, resample
        prepared = [process_image(im, 64, center_crop_params() if crop else None, resample) for im in raw]
        np.testing.assert_array_equal(policy.prepare_images(raw)[0], prepared[0])
        # a camera that already delivers the training size still gets the crop of an image_aug checkpoint
        native = prepared[1]
        expect = process_image(native, 64, center_crop_params(), resample) if crop else native
        np.testing.assert_array_equal(policy.prepare_images([native, native])[0], expect)
        from_raw = policy.predict_action(raw, "open the drawer", proprio)
        policy.center_crop = False  # already-prepared training-size frames then pass through unchanged
        np.testing.assert_allclose(from_raw, policy.predict_action(prepared, "open the drawer", proprio), atol=1e-6)


def test_run_dir_and_latest_pointer_resolve_to_the_newest_checkpoint(trained, tmp_path):
    """What `latentvla train` prints (the run dir) or its `checkpoints/latest` pointer load like the step dir."""
    import shutil

    from latentvla.eval.checkpoint_info import read_checkpoint_info
    from latentvla.vla.checkpoint import resolve_policy_dir

    _, ckpt, _ = trained
    run = tmp_path / "run"
    shutil.copytree(ckpt, run / "checkpoints" / "step_5")
    (run / "checkpoints" / "latest").write_text("step_5\n")
    step = run / "checkpoints" / "step_5"
    for given in (run, run / "checkpoints", run / "checkpoints" / "latest", step):
        assert resolve_policy_dir(given) == step
    assert read_checkpoint_info(str(run))["vla_id"] == "la_tok"
    assert VLAPolicy.from_pretrained(run, device="cpu").chunk_len == 8
    (run / "checkpoints" / "latest").write_text("step_9\n")
    with pytest.raises(LatentVLAError, match="step_9.*not a complete policy checkpoint"):
        resolve_policy_dir(run)


def test_moved_backbone_is_found_through_vlm_path(trained, tiny_vlm_dir, tmp_path):
    """A checkpoint copied to another machine: serve / eval take --vlm_path (PolicySpec.vlm_path)."""
    import shutil

    from latentvla.eval.policies import PolicySpec, build_policy

    _, ckpt, _ = trained
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["vla"]["vlm_path"] = str(tmp_path / "cluster" / "qwen3vl")
    (moved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LatentVLAError, match="--vlm_path of `latentvla serve` / `latentvla eval libero`"):
        build_policy(PolicySpec(checkpoint=str(moved), device="cpu"))
    assert build_policy(PolicySpec(checkpoint=str(moved), device="cpu", vlm_path=str(tiny_vlm_dir))).chunk_len == 8


def test_merged_export_loads_and_predicts_like_the_lora_checkpoint(trained, tmp_path):
    """The `latentvla train --merge_lora True` export (`<run>/merged/`) serves like the checkpoint it came from."""
    import shutil

    from safetensors.torch import save_file

    from latentvla.vla.checkpoint import MERGED_FORMAT

    model, ckpt, ds = trained
    merged = tmp_path / "merged"
    shutil.copytree(ckpt, merged)
    save_file({k: v.contiguous() for k, v in model.merged_state_dict().items()}, str(merged / "model.safetensors"),
              metadata={"format": MERGED_FORMAT})
    loaded, _, _ = load_policy_model(merged)
    assert loaded.cfg.lora_rank == 0
    batch = model.processor.collate([ds[2], ds[7]])
    torch.testing.assert_close(loaded.predict_actions(batch), model.predict_actions(batch), atol=1e-4, rtol=1e-4)
    sd = model.merged_state_dict()
    sd.pop("backbone.lm_head.weight")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(merged / "model.safetensors"),
              metadata={"format": MERGED_FORMAT})
    with pytest.raises(LatentVLAError, match="lacks"):
        load_policy_model(merged)


def _decoded_reference(model, sample, stats, tok_path):
    """--decode_tokens by hand: top-1 codes -> the tokenizer's decoder -> un-normalized like the head's chunk."""
    from latentvla.lam.action_tokenizer import ActionChunkTokenizer

    codes = model.predict_codes(model.processor.collate([sample]))
    decoded = ActionChunkTokenizer.from_checkpoint(tok_path).decode(codes)[0].numpy()
    return unnormalize(decoded, stats["action"], LIBERO.action_norm_mask, LIBERO.normalization)


def test_decode_tokens_returns_the_tokenizer_decoded_chunk(trained):
    from latentvla.eval.policies import PolicySpec, build_policy

    model, ckpt, ds = trained
    tok_path = json.loads((ckpt / "config.json").read_text())["train"]["action_tokenizer_ckpt"]
    stats = ds.statistics["libero_goal_no_noops"]
    s = ds[6]
    raw_proprio = unnormalize(s["proprio"], stats["proprio"], LIBERO.proprio_norm_mask, LIBERO.normalization)
    expected = _decoded_reference(model, s, stats, tok_path)
    # the eval libero / serve factory, the tokenizer loaded from the path the checkpoint records
    policy = build_policy(PolicySpec(kind="vla", checkpoint=str(ckpt), device="cpu", decode_tokens=True))
    assert policy.decode_tokens and policy.model.action_tokenizer is not None
    chunk = policy.predict_action(list(s["images"]), s["instruction"], raw_proprio)
    assert chunk.shape == (8, 7) and chunk.dtype == np.float32
    np.testing.assert_allclose(chunk, expected, atol=1e-4)
    batched = policy.predict_action([list(s["images"]), list(ds[9]["images"])], [s["instruction"], "push the plate"],
                                    [raw_proprio, raw_proprio])
    np.testing.assert_allclose(batched[0], expected, atol=1e-4)
    # never the default path: without the flag no tokenizer is loaded and the head's chunk comes back
    default = VLAPolicy.from_pretrained(ckpt, device="cpu")
    assert not default.decode_tokens and default.model.action_tokenizer is None
    head_chunk = default.predict_action(list(s["images"]), s["instruction"], raw_proprio)
    assert not np.allclose(head_chunk, chunk, atol=1e-3)


def test_decode_tokens_errors(trained, tmp_path, monkeypatch):
    import shutil

    from latentvla.lam.action_tokenizer import ActionTokenizerModel
    from latentvla.lam.action_tokenizer_checkpoint import save_tokenizer_checkpoint
    from latentvla.lam.configuration_action_tokenizer import ActionTokenizerConfig

    model, ckpt, ds = trained
    tok_path = json.loads((ckpt / "config.json").read_text())["train"]["action_tokenizer_ckpt"]

    def copy(name, edit):
        d = tmp_path / name
        shutil.copytree(ckpt, d)
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
        return d

    baseline = copy("baseline", lambda c: c["vla"].update(vla_id="baseline"))
    moved = copy("moved",
                 lambda c: c["train"].update(action_tokenizer_ckpt=str(tmp_path / "gone" / "tokenizer_step_1.pt")))
    unrecorded = copy("unrecorded", lambda c: c["train"].pop("action_tokenizer_ckpt"))
    with monkeypatch.context() as m:  # each of these fails before any backbone is loaded
        m.setattr(LatentVLA, "from_config", lambda *a, **k: pytest.fail("loaded a model before the check"))
        with pytest.raises(LatentVLAError, match="--decode_tokens needs a la_tok checkpoint.*'baseline'"):
            VLAPolicy.from_pretrained(baseline, device="cpu", decode_tokens=True)
        with pytest.raises(LatentVLAError, match="gone/tokenizer_step_1.pt.*recorded in "
                                                 "config.json.*--action_tokenizer_ckpt"):
            VLAPolicy.from_pretrained(moved, device="cpu", decode_tokens=True)
        with pytest.raises(LatentVLAError, match="records no train.action_tokenizer_ckpt; pass "
                                                 "--action_tokenizer_ckpt"):
            VLAPolicy.from_pretrained(unrecorded, device="cpu", decode_tokens=True)
        with pytest.raises(LatentVLAError, match="--action_tokenizer_ckpt .*missing.pt: not found"):
            VLAPolicy.from_pretrained(moved, device="cpu", decode_tokens=True,
                                      action_tokenizer_ckpt=str(tmp_path / "missing.pt"))
        with pytest.raises(LatentVLAError, match="--action_tokenizer_ckpt is only used with --decode_tokens True"):
            VLAPolicy.from_pretrained(ckpt, device="cpu", action_tokenizer_ckpt=tok_path)
        small = save_tokenizer_checkpoint(tmp_path / "small" / "tokenizer_step_1.pt", ActionTokenizerModel(
            ActionTokenizerConfig(hidden_dim=16, codebook_size=16, num_heads=2, ffn_dim=32, decoder_hidden_dim=16)),
            step=1, statistics={}, platform=LIBERO.to_dict())
        with pytest.raises(LatentVLAError, match="codebook size 16 != the checkpoint's codebook_size 32"):
            VLAPolicy.from_pretrained(moved, device="cpu", decode_tokens=True, action_tokenizer_ckpt=str(small))
    # the override flag finds the moved tokenizer
    relocated = tmp_path / "relocated.pt"
    shutil.copy(tok_path, relocated)
    policy = VLAPolicy.from_pretrained(moved, device="cpu", decode_tokens=True, action_tokenizer_ckpt=str(relocated))
    s = ds[3]
    stats = ds.statistics["libero_goal_no_noops"]
    raw_proprio = unnormalize(s["proprio"], stats["proprio"], LIBERO.proprio_norm_mask, LIBERO.normalization)
    np.testing.assert_allclose(policy.predict_action(list(s["images"]), s["instruction"], raw_proprio),
                               _decoded_reference(model, s, stats, tok_path), atol=1e-4)
    # a model without its tokenizer cannot decode
    plain, _, statistics = load_policy_model(ckpt)
    with pytest.raises(LatentVLAError, match="decode_tokens needs a la_tok model with its action tokenizer"):
        VLAPolicy(plain, statistics, decode_tokens=True)


def test_serve_decode_tokens_answers_with_the_decoded_chunk(trained, monkeypatch):
    from latentvla.serve.client import PolicyClient
    from latentvla.serve.configuration_serve import ServeConfig
    from latentvla.serve.server import PolicyServer, run_server

    model, ckpt, ds = trained
    tok_path = json.loads((ckpt / "config.json").read_text())["train"]["action_tokenizer_ckpt"]
    built = []
    start = PolicyServer.start
    # no blocking loop
    monkeypatch.setattr(PolicyServer, "start", lambda self, timeout=30.0: built.append(self) or self)
    assert run_server(ServeConfig(pretrained_checkpoint=str(ckpt), port=0, device="cpu", decode_tokens=True)) == 0
    (server,) = built
    assert server.policy.decode_tokens and server.metadata["decode_tokens"] is True
    stats = ds.statistics["libero_goal_no_noops"]
    s = ds[6]
    raw_proprio = unnormalize(s["proprio"], stats["proprio"], LIBERO.proprio_norm_mask, LIBERO.normalization)
    start(server)
    try:
        with PolicyClient("127.0.0.1", server.port) as client:
            assert client.metadata["decode_tokens"] is True
            actions = client.predict_action(list(s["images"]), s["instruction"], raw_proprio)
    finally:
        server.stop()
    np.testing.assert_allclose(actions, _decoded_reference(model, s, stats, tok_path), atol=1e-4)


def test_checkpoint_without_head_dim_loads_with_its_trained_width(tiny_vlm_dir, vla_data_root, tmp_path):
    """Checkpoints record head_dim None when it was the default; the default changed (H -> H/4, at least 64),
    so the loader takes the width from the weights: checkpoints written before keep loading."""
    from latentvla.vla.modeling_vla import default_head_dim

    assert [default_head_dim(w) for w in (2048, 256, 64, 32)] == [512, 64, 64, 32]
    torch.manual_seed(0)
    model = LatentVLA.from_config(VLAConfig(vlm_path=str(tiny_vlm_dir), default_image_size=64, head_dim=32), LIBERO,
                                  device="cpu").eval()
    ds = VLADataset(vla_data_root, "libero_goal", image_size=64, image_aug=False, progress=False)
    save_policy_checkpoint(tmp_path / "old", model, {}, ds.statistics)
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    cfg["vla"]["head_dim"] = None
    del cfg["vla"]["head_mlp_ratio"]  # a config written before the option existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded, _, _ = load_policy_model(tmp_path / "old")
    assert loaded.action_head.chunk_queries.shape[1] == 32
    batch = model.processor.collate([ds[1]])
    torch.testing.assert_close(loaded.predict_actions(batch), model.predict_actions(batch))
