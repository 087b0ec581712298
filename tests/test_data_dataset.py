"""Samples, statistics, index cache, annotated datasets, sampler and transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from latentvla.data.dataset import ActionChunkDataset, FramePairDataset, VLADataset
from latentvla.data.features import tensor_feature
from latentvla.data.registry import resolve_data_mix
from latentvla.data.sampler import GlobalSampler, SampleIndex, mixture_order
from latentvla.data.statistics import load_or_compute_statistics
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.data.tfds import TFDSBuilderDir
from latentvla.data.transforms import AugmentParams, process_image, sample_augment_params
from latentvla.errors import LatentVLAError
from latentvla.robots import get_platform, normalize


@pytest.fixture
def root(tmp_path):
    write_synthetic_dataset(tmp_path, "libero_goal_no_noops", num_episodes=3, steps=[10, 12, 5], image_size=48)
    return tmp_path


def test_statistics_match_numpy_and_are_cached(root):
    (r,) = resolve_data_mix(root, "libero_goal")
    stats = load_or_compute_statistics(r, progress=False)
    b = TFDSBuilderDir(r.path)
    eps = list(b.iter_episodes(keys=["action", "observation/state"]))
    acts = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    acts[:, -1] = 1 - np.clip(acts[:, -1], 0, 1)  # LIBERO gripper: 1 open, 0 close
    st = np.concatenate([e["observation/state"] for e in eps]).astype(np.float64)
    prop = np.concatenate([st[:, :6], st[:, -2:]], 1)
    assert stats["num_transitions"] == 27 and stats["num_trajectories"] == 3
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(acts, 0.99, axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["proprio"]["mean"], prop.mean(0), rtol=1e-5, atol=1e-7)
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert sorted(stats["action"]) == sorted(["mean", "std", "min", "max", "q01", "q99", "mask"])
    cached = list((r.path / ".latentvla_cache").glob("statistics-*.json"))
    assert len(cached) == 1
    assert load_or_compute_statistics([r], progress=False) == {"libero_goal_no_noops": stats}


def test_vla_sample_contents(root):
    ds = VLADataset(root, '["libero_goal"]', image_size=32, seed=3, progress=False)
    assert len(ds) == 27 and ds.platform.name == "libero" and ds.chunk_len == 8
    s = ds[12]  # episode 1, step 2
    assert (s["dataset_name"], s["episode"], s["step"]) == ("libero_goal_no_noops", 1, 2)
    assert s["images"].shape == (2, 32, 32, 3) and s["images"].dtype == np.uint8
    assert s["instruction"] == s["instruction"].strip().lower() and s["instruction"]
    assert s["proprio"].shape == (8,) and s["proprio"].dtype == np.float32
    assert s["actions"].shape == (8, 7) and s["action_pad"].tolist() == [False] * 8
    stats = ds.statistics["libero_goal_no_noops"]
    raw = TFDSBuilderDir(ds.resolved[0].path).read_episode(1, keys=["action"])["action"][2:10].copy()
    raw[:, -1] = 1 - np.clip(raw[:, -1], 0, 1)
    np.testing.assert_allclose(s["actions"],
                               normalize(raw, stats["action"], get_platform("libero").action_norm_mask, "bounds_q99"),
                               atol=1e-6)
    assert np.abs(s["actions"][:, :6]).max() <= 1.0 and set(np.unique(s["actions"][:, 6])) <= {0.0, 1.0}
    # past the end: gripper repeats, deltas are zero motion, pad marks them
    end = ds[26]  # episode 2 (5 steps), step 4
    assert end["action_pad"].tolist() == [False] + [True] * 7
    assert np.all(end["actions"][1:, 6] == end["actions"][0, 6])
    zero = normalize(np.zeros((1, 7)), stats["action"], get_platform("libero").action_norm_mask, "bounds_q99")[0, :6]
    np.testing.assert_allclose(end["actions"][3, :6], zero, atol=1e-6)
    # seeded augmentation: same (seed, epoch, index) -> same images; other epoch differs
    again = VLADataset(root, "libero_goal", image_size=32, seed=3, progress=False)
    assert np.array_equal(again[12]["images"], s["images"])
    assert not np.array_equal(ds[SampleIndex(12, epoch=1)]["images"], s["images"])
    one = VLADataset(root, "libero_goal", image_size=32, use_wrist_image=False, use_proprio=False, train=False,
                     progress=False)
    s1 = one[12]
    assert s1["images"].shape == (1, 32, 32, 3) and s1["proprio"].shape == (0,)
    assert np.array_equal(one[12]["images"], s1["images"])  # eval: deterministic, no aug
    with pytest.raises(LatentVLAError, match="window_size 10 does not match the chunk length 8"):
        VLADataset(root, "libero_goal", window_size=10, progress=False)
    with pytest.raises(IndexError):
        ds[27]


def test_action_chunks_and_frame_pairs(root):
    a = ActionChunkDataset(root, "libero_goal", progress=False)
    s = a[0]
    assert set(s) == {"actions", "action_pad", "dataset_name", "episode", "step"} and s["actions"].shape == (8, 7)
    f = FramePairDataset(root, "libero_goal", pair_offset=4, image_size=32, progress=False)
    p = f[8]  # episode 0, step 8 -> pair (8, 9)
    assert p["frames"].shape == (2, 32, 32, 3) and p["actions"].shape == (4, 7)
    assert p["action_pad"].tolist() == [False, False, True, True]
    assert not np.array_equal(p["frames"][0], p["frames"][1])  # frames follow the actions


def test_annotated_copy_serves_latent_chunks(root):
    C, Z = 4, 128

    def extra(e, t):
        return {"latent_idx": np.arange(C) + 10 * t + 1000 * e, "latent_z": np.full((C, Z), t, np.float32)}

    feats = {"latent_idx": tensor_feature((C,), "int64"), "latent_z": tensor_feature((C, Z))}
    write_synthetic_dataset(root, "libero_goal_no_noops_latent", num_episodes=3, steps=[10, 12, 5], image_size=48,
                            layout="libero", extra_step_features=feats, extra_fn=extra)
    with pytest.raises(LatentVLAError, match="libero_10_no_noops.*lacks per-step key.*latent_idx.*annotate"):
        write_synthetic_dataset(root, "libero_10_no_noops", num_episodes=1, steps=3, image_size=16)
        VLADataset(root, "libero_10", extra_keys=("latent_idx",), progress=False)
    for mix in ("libero_goal", "libero_goal_latent"):  # automatic sibling lookup, and the explicit name
        ds = VLADataset(root, mix, image_size=16, extra_keys=("latent_idx", "latent_z"), progress=False)
        s = ds[22]  # episode 2, step 0 (5 steps)
        assert s["latent_idx"].shape == (8, C) and s["latent_idx"].dtype == np.int64
        assert s["latent_z"].shape == (8, C, Z) and s["latent_z"].dtype == np.float32
        assert s["latent_idx"][:, 0].tolist() == [2000, 2010, 2020, 2030, 2040, 2040, 2040, 2040]
        assert s["latent_z"][:, 0, 0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
        assert list(ds.statistics) == ["libero_goal_no_noops"]
    # float32 latent_idx is accepted too
    write_synthetic_dataset(root, "libero_spatial_no_noops_latent", num_episodes=1, steps=4, image_size=16,
                            layout="libero", extra_step_features={"latent_idx": tensor_feature((C,), "float32")},
                            extra_fn=lambda e, t: {"latent_idx": np.full(C, t, np.float32)})
    ds = VLADataset(root, "libero_spatial_latent", image_size=16, extra_keys=("latent_idx",), progress=False)
    assert ds[1]["latent_idx"].dtype == np.int64 and ds[1]["latent_idx"][0].tolist() == [1] * C


def test_global_sampler_permutation_ranks_resume(root):
    ds = ActionChunkDataset(root, "libero_goal", progress=False)
    s = GlobalSampler(ds, seed=7)
    order = list(s)
    assert sorted(order) == list(range(27)) and all(isinstance(i, SampleIndex) and i.epoch == 0 for i in order)
    s.set_epoch(1)
    assert list(s) != order
    r0, r1 = GlobalSampler(ds, seed=7, rank=0, world_size=2), GlobalSampler(ds, seed=7, rank=1, world_size=2)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == 14 and set(a) | set(b) == set(range(27))
    # resume: the stream continues where the state says
    s = GlobalSampler(ds, seed=7)
    it = iter(s)
    first = [next(it) for _ in range(10)]
    state = s.state_dict()
    t = GlobalSampler(ds, seed=7)
    t.load_state_dict(state)
    assert first + list(t) == order
    assert pickle.loads(pickle.dumps(SampleIndex(5, 3))).epoch == 3
    with pytest.raises(LatentVLAError, match="world_size"):
        GlobalSampler(ds, seed=7, world_size=2).load_state_dict(state)


def test_mixture_weights():
    order = mixture_order([100, 100], [3.0, 1.0], seed=0, epoch=0)
    assert len(order) == 200
    assert abs((order < 100).sum() - 150) <= 1  # per-transition probability 3:1
    assert sorted(mixture_order([5, 7], [1, 1], 0, 0).tolist()) == list(range(12))


def test_transforms_seeded_and_shapes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    p = sample_augment_params(np.random.default_rng(1))
    assert p == sample_augment_params(np.random.default_rng(1))
    x0, y0, x1, y1 = p.crop
    assert abs((x1 - x0) * (y1 - y0) - 0.9) < 1e-9 and -0.2 <= p.brightness <= 0.2 and 0.8 <= p.contrast <= 1.2
    out = process_image(img, 32, p)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out, process_image(img, 32, p))
    # identity colour params leave colours alone; brightness shifts them
    flat = np.full((16, 16, 3), 100, np.uint8)
    assert np.array_equal(process_image(flat, 16, AugmentParams()), flat)
    brighter = process_image(flat, 16, AugmentParams(brightness=0.1))
    assert np.all(np.abs(brighter.astype(int) - 125) <= 1)
    grey = process_image(np.dstack([np.full((8, 8), v, np.uint8) for v in (200, 50, 50)]), 8,
                         AugmentParams(saturation=0.0))
    assert np.ptp(grey[0, 0].astype(int)) <= 1  # zero saturation -> grey


def test_dataloader_workers_match_single_process(root):
    import torch
    from torch.utils.data import DataLoader

    ds = VLADataset(root, "libero_goal", image_size=16, seed=5, progress=False)
    sampler = GlobalSampler(ds, seed=5)
    sampler.set_epoch(2)
    ref = [ds[i] for i in list(sampler)[:8]]
    sampler.set_epoch(2)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)
    batches = [b for _, b in zip(range(2), loader, strict=False)]
    images = torch.cat([b["images"] for b in batches]).numpy()
    assert np.array_equal(images, np.stack([r["images"] for r in ref]))  # same aug seeds (epoch travels with the index)
    assert [int(x) for b in batches for x in b["step"]] == [r["step"] for r in ref]


def test_fast_resample_option(root):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    p = sample_augment_params(np.random.default_rng(2))
    for mode in ("bicubic", "bilinear"):
        out = process_image(img, 24, p, resample=mode)
        assert out.shape == (24, 24, 3) and np.array_equal(out, process_image(img, 24, p, resample=mode))
    smooth = np.kron(rng.integers(0, 256, (5, 5, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    a = process_image(smooth, 32, None, "lanczos").astype(int)
    b = process_image(smooth, 32, None, "bicubic").astype(int)
    assert np.abs(a - b).mean() < 4  # both antialiased resizes of the same image
    with pytest.raises(LatentVLAError, match="resample must be one of"):
        VLADataset(root, "libero_goal", resample="nearest", progress=False)


def test_statistics_cache_reused_and_no_image_decoding(root, monkeypatch):
    import latentvla.data.index as index_mod
    import latentvla.data.transforms as transforms_mod

    def no_decode(*a, **k):
        raise AssertionError("statistics must not decode images")

    monkeypatch.setattr(transforms_mod, "decode_array", no_decode)
    (r,) = resolve_data_mix(root, "libero_goal")
    first = load_or_compute_statistics(r, progress=False)

    def no_rebuild(*a, **k):
        raise AssertionError("cached statistics/index must be reused")

    monkeypatch.setattr(index_mod, "build_index", no_rebuild)
    assert load_or_compute_statistics(r, progress=False) == first
    ActionChunkDataset(root, "libero_goal", progress=False)  # index comes from the cache too


def test_mixture_of_two_datasets(root):
    write_synthetic_dataset(root, "libero_10_no_noops", num_episodes=2, steps=4, image_size=16)
    ds = VLADataset(root, '[["libero_goal", 1.0], ["libero_10", 3.0]]', image_size=16, progress=False)
    assert len(ds) == 27 + 8 and ds.dataset_weights == [1.0, 3.0]
    assert sorted(ds.statistics) == ["libero_10_no_noops", "libero_goal_no_noops"]
    assert ds[30]["dataset_name"] == "libero_10_no_noops"
    order = list(GlobalSampler(ds, seed=0))
    assert len(order) == 35 and sum(i >= 27 for i in order) > 8  # up-weighted dataset repeats
    write_synthetic_dataset(root, "aloha_lift_pot", num_episodes=1, steps=3, image_size=16)
    with pytest.raises(LatentVLAError, match="different platforms"):
        VLADataset(root, '["libero_goal", "aloha_lift_pot"]', progress=False)
    a = VLADataset(root, "aloha_lift_pot", image_size=16, progress=False)
    s = a[0]
    assert s["images"].shape == (3, 16, 16, 3) and s["actions"].shape == (25, 14) and s["proprio"].shape == (14,)


def _ddp_worker(rank, world, init_file, root, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds = VLADataset(root, "libero_goal", image_size=16, progress=False)  # rank 0 indexes, rank 1 waits
        sampler = GlobalSampler(ds, seed=1, rank=rank, world_size=world)
        out.put((rank, [int(i) for i in sampler], ds.statistics["libero_goal_no_noops"]["num_transitions"]))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_share_index_and_split_the_stream(tmp_path):
    import multiprocessing as mp

    root = tmp_path / "data"
    write_synthetic_dataset(root, "libero_goal_no_noops", num_episodes=2, steps=[7, 6], image_size=16)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"), root, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    (r0, a, n0), (r1, b, n1) = results
    assert n0 == n1 == 13 and len(a) == len(b) == 7 and set(a) | set(b) == set(range(13))
    assert len(list((root / "libero_goal_no_noops" / "1.0.0" / ".latentvla_cache").glob("index-*.npz"))) == 1


def test_png_images_and_metaworld_layout(tmp_path):
    write_synthetic_dataset(tmp_path, "metaworld_demo", num_episodes=2, steps=5, image_size=20, encoding="png")
    ds = VLADataset(tmp_path, "metaworld_demo", image_size=16, window_size=4, progress=False)
    s = ds[3]
    assert ds.platform.name == "metaworld" and s["images"].shape == (2, 16, 16, 3)
    assert s["actions"].shape == (4, 4) and s["proprio"].shape == (4,)
