"""The strategy registry (`configuration_vla.STRATEGIES`) is the only list of variants: training options,
preflight, the demo and `--help` read it, and a sixth variant registered in one file outside the package
(tests/sixth_variant.py) trains through `latentvla train` and loads into `VLAPolicy`, also in a fresh
process that knows it only from the checkpoint."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentvla.cli import main
from latentvla.config import build_parser, parse_config
from latentvla.demo.configuration_demo import DemoConfig
from latentvla.errors import LatentVLAError
from latentvla.train.configuration_train import TrainConfig
from latentvla.vla.configuration_vla import STRATEGIES, VLA_IDS, VLAConfig, VLAOptions, strategy_class

TESTS = Path(__file__).resolve().parent
SIXTH = "la_first_code"
# Loads the checkpoint argv[1] in a fresh process and prints its chunk for the same inputs as `_ask`.
FRESH = ("import json, sys\nimport numpy as np\nfrom latentvla.vla.policy import VLAPolicy\n"
         "policy = VLAPolicy.from_pretrained(sys.argv[1], device='cpu')\n"
         "print(json.dumps(policy.predict_action([np.zeros((64, 64, 3), np.uint8)] * 2, 'put the bowl on the plate', "
         "np.zeros(8, np.float32)).tolist()))")


def _ask(policy) -> np.ndarray:
    return policy.predict_action([np.zeros((64, 64, 3), np.uint8)] * 2, "put the bowl on the plate",
                                 np.zeros(8, np.float32))


@pytest.fixture
def sixth_variant():
    """Unregisters the sixth variant afterwards: the other tests see the built-in five only."""
    assert SIXTH not in STRATEGIES
    yield SIXTH
    STRATEGIES.pop(SIXTH, None)
    sys.modules.pop("sixth_variant", None)


def test_declarations_name_real_options():
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    vla_fields = {f.name for f in dataclasses.fields(VLAConfig)}
    assert tuple(STRATEGIES) == VLA_IDS == ("baseline", "la_align", "la_direct", "la_cond", "la_tok")
    for vla_id in STRATEGIES:
        cls = strategy_class(vla_id)
        assert cls.name == vla_id and set(cls.options) <= train_fields | vla_fields, vla_id
        assert cls.helper_option is None or cls.helper_option in train_fields
    assert strategy_class("la_tok").helper_option == "action_tokenizer_ckpt"
    help_text = " ".join(build_parser(TrainConfig).format_help().split())
    assert all(v in help_text for v in STRATEGIES) and "--strategy_modules" in help_text


def test_every_model_option_reaches_the_model_config():
    from latentvla.robots import get_platform
    from latentvla.train.preflight import PreflightResult
    from latentvla.train.run import build_vla_config

    given = {"vla_id": "la_cond", "strategy_modules": ["json"], "vlm_path": "x", "default_image_size": 256,
             "attn_implementation": "eager"}
    for f in dataclasses.fields(VLAOptions):
        d = f.default
        if f.name not in given:  # any other valid value than the default
            given[f.name] = not d if isinstance(d, bool) else 3 if d is None or isinstance(d, int) else d + 0.25
    cfg = TrainConfig(**given, data_root_dir="y")
    vcfg = build_vla_config(cfg, PreflightResult(get_platform("libero"), ["libero_goal"]))
    assert {name: getattr(vcfg, name) for name in given} == given
    assert {f.name for f in dataclasses.fields(VLAOptions)} <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_strategy_modules_errors_name_the_flag():
    with pytest.raises(LatentVLAError, match="--strategy_modules 'no_such_module_xyz': cannot import"):
        TrainConfig(vlm_path="x", data_root_dir="y", strategy_modules=["no_such_module_xyz"]).validate()
    with pytest.raises(LatentVLAError, match=f"--vla_id '{SIXTH}' is unknown.*--strategy_modules"):
        TrainConfig(vlm_path="x", data_root_dir="y", vla_id=SIXTH).validate()


def test_the_demo_reads_the_registry(tmp_path, sixth_variant):
    from latentvla.demo.pipeline import Demo

    with pytest.raises(LatentVLAError, match="--variants"):
        parse_config(DemoConfig, ["--variants", f"baseline,{SIXTH}"])
    importlib.import_module("sixth_variant")  # registers it, as --strategy_modules would

    d = Demo(parse_config(DemoConfig, ["--output_dir", str(tmp_path), "--variants", f"baseline,{SIXTH}"]))
    names = d.stage_names()
    assert {"image_lam", "annotate", f"train:{SIXTH}"} <= set(names) and "action_tokenizer" not in names


def test_sixth_variant_trains_through_the_cli(tmp_path, tiny_vlm_dir, vla_data_root, sixth_variant, capsys):
    runs = tmp_path / "runs"
    argv = ["train", "--strategy_modules", "sixth_variant", "--vla_id", SIXTH, "--vlm_path", str(tiny_vlm_dir),
            "--data_root_dir", str(vla_data_root), "--data_mix", '["libero_goal"]', "--run_root_dir", str(runs),
            "--run_id", "sixth", "--default_image_size", "64", "--max_steps", "2", "--per_device_batch_size", "2",
            "--save_step", "2", "--lora_rank", "4", "--num_workers", "0", "--progress", "False",
            "--latent_loss_weight", "0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    labelled = vla_data_root / "libero_goal_no_noops_latent" / "1.0.0"
    assert f"libero_goal_no_noops ({labelled})" in out  # preflight looked for its sample key, latent_idx
    assert f"--latent_loss_weight is only used by la_align; ignored for {SIXTH}" in out
    run = runs / "sixth"
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(np.isfinite(r["ce"]) for r in recs)
    ckpt = run / "checkpoints" / "step_2"
    vla = json.loads((ckpt / "config.json").read_text())["vla"]
    assert (vla["vla_id"], vla["strategy_modules"], vla["latent_codes_per_step"]) == (SIXTH, ["sixth_variant"], 4)

    from latentvla.vla.policy import VLAPolicy

    here = _ask(VLAPolicy.from_pretrained(ckpt, device="cpu"))
    assert here.shape == (8, 7) and np.isfinite(here).all()
    # A fresh process: the checkpoint's strategy_modules registers the variant before the model is built.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", FRESH, str(ckpt)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.array(json.loads(r.stdout.splitlines()[-1])), here, rtol=1e-5, atol=1e-5)
