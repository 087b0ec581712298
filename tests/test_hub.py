"""Hugging Face Hub repo ids where model paths are expected (`latentvla.utils.hub`), offline only:
each test builds the cache layout `hf download` leaves behind (`models--org--name/snapshots/<commit>/`
plus `refs/main`) in tmp_path and points HF_HUB_CACHE at it with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from latentvla.cli import main
from latentvla.errors import LatentVLAError
from latentvla.utils.hub import parse_repo_id, resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str, files_from: Path | None = None, files: dict[str, str] | None = None) -> Path:
    """Put a snapshot of `repo_id` (a copy of `files_from`, plus `files`) into the cache; -> the snapshot dir."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    if files_from is not None:
        shutil.copytree(files_from, snapshot)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (snapshot / name).write_text(text)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_repo_id_shapes():
    assert parse_repo_id("Qwen/Qwen3-VL-2B-Instruct").repo_id == "Qwen/Qwen3-VL-2B-Instruct"
    ref = parse_repo_id("org/name@v1.0")
    assert (ref.repo_id, ref.revision, str(ref)) == ("org/name", "v1.0", "org/name@v1.0")
    for local in ("/models/qwen", "./org/name", "../org/name", "~/org/name", "qwen", "org/name/extra", "org/",
                  "org/-name", "org/na--me", "org/na..me", "runs/baseline+libero_goal+b8"):
        assert parse_repo_id(local) is None, local


def test_resolves_to_the_cached_snapshot(hub_cache, tmp_path, monkeypatch):
    snapshot = cache_repo(hub_cache, "org/model", files={"config.json": "{}"})
    assert resolve_model_path("org/model", "--vlm_path").resolve() == snapshot.resolve()
    assert resolve_model_path(f"org/model@{COMMIT}", "--vlm_path").resolve() == snapshot.resolve()
    # An existing local path wins over the Hub, even one shaped like a repo id; other missing paths pass through.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert resolve_model_path("org/model", "--vlm_path") == Path("org/model")
    assert resolve_model_path("/no/such/dir", "--vlm_path") == Path("/no/such/dir")


def test_unknown_repo_offline_is_one_clear_error(hub_cache, tmp_path, capsys, tiny_vlm_dir, vla_data_root):
    cache_repo(hub_cache, "org/model", files={"config.json": "{}"})
    for value in ("org/missing", "org/model@no-such-branch"):
        with pytest.raises(LatentVLAError) as e:
            resolve_model_path(value, "--vlm_path")
        msg = str(e.value)
        assert msg.startswith(f"--vlm_path {value}: not a local path") and str(hub_cache) in msg, msg
        assert "HF_HUB_OFFLINE=1" in msg and "hf download org/" in msg
    runs = tmp_path / "runs"
    argv = ["train", "--vlm_path", "org/missing", "--data_root_dir", str(vla_data_root), "--data_mix",
            '["libero_goal"]', "--run_root_dir", str(runs), "--max_steps", "1"]
    assert main(argv) == 2 and not runs.exists()
    err = capsys.readouterr().err
    assert "--vlm_path org/missing" in err and str(hub_cache) in err and "Traceback" not in err
    # Only --from_pretrained True reads --pretrained_checkpoint, so only then is a repo id looked up.
    argv[2] = str(tiny_vlm_dir)
    assert main([*argv, "--from_pretrained", "True", "--pretrained_checkpoint", "org/no-policy"]) == 2
    assert "--pretrained_checkpoint org/no-policy: not a local path" in capsys.readouterr().err


def test_file_flags_pick_the_single_checkpoint_of_a_repo(hub_cache):
    one = cache_repo(hub_cache, "org/lam-one", files={"lam-stage-2.ckpt": "x", "README.md": "y"})
    assert resolve_model_path("org/lam-one", "--lam_path", file_suffixes=(".ckpt",)) == one / "lam-stage-2.ckpt"
    cache_repo(hub_cache, "org/lam-two", files={"lam-stage-1.ckpt": "x", "lam-stage-2.ckpt": "x"})
    with pytest.raises(LatentVLAError, match=r"--lam_path org/lam-two: .*several checkpoints \(lam-stage-1.ckpt, "
                                             r"lam-stage-2.ckpt\); pass the one you mean"):
        resolve_model_path("org/lam-two", "--lam_path", file_suffixes=(".ckpt",))
    ours = cache_repo(hub_cache, "org/lam-ours", files={"config.json": "{}", "extra.ckpt": "x"})
    assert resolve_model_path("org/lam-ours", "--lam_path", file_suffixes=(".ckpt",)) == ours  # a model dir itself


def test_train_and_load_through_hub_ids(hub_cache, tmp_path, tiny_vlm_dir, vla_data_root, capsys):
    """`latentvla train --vlm_path org/name` end to end; the run config records the repo id and the snapshot,
    and the policy loads from a Hub id too (checkpoint and backbone)."""
    snapshot = cache_repo(hub_cache, "org/tiny-qwen3vl", files_from=tiny_vlm_dir)
    runs = tmp_path / "runs"
    argv = ["train", "--vlm_path", "org/tiny-qwen3vl", "--data_root_dir", str(vla_data_root),
            "--data_mix", '["libero_goal"]', "--run_root_dir", str(runs), "--run_id", "hub", "--max_steps", "1",
            "--save_step", "1", "--per_device_batch_size", "1", "--default_image_size", "64", "--lora_rank", "4",
            "--num_workers", "0", "--progress", "False"]
    assert main(argv) == 0
    assert f"--vlm_path org/tiny-qwen3vl: Hugging Face snapshot {snapshot}" in capsys.readouterr().out
    config = yaml.safe_load((runs / "hub" / "config.yaml").read_text())
    assert Path(config["vlm_path"]).resolve() == snapshot.resolve() and config["vlm_model_id"] == "org/tiny-qwen3vl"
    assert config["derived"]["hub"]["vlm_path"]["repo_id"] == "org/tiny-qwen3vl"
    from latentvla.vla.policy import VLAPolicy

    policy_snapshot = cache_repo(hub_cache, "org/tiny-policy", files_from=runs / "hub" / "checkpoints" / "step_1")
    policy = VLAPolicy.from_pretrained("org/tiny-policy", device="cpu", vlm_path="org/tiny-qwen3vl")
    assert policy.chunk_len == 8 and policy_snapshot.is_dir()
