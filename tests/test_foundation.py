import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest

from latentvla.cli import COMMANDS, main
from latentvla.config import arg, config_from_dict, parse_config
from latentvla.errors import LatentVLAError
from latentvla.robots import Platform, get_platform, normalize, register_platform, unnormalize
from latentvla.utils.atomic import atomic_directory, atomic_write_json


@dataclass
class _Cfg:
    out_dir: str = arg("out", "where", positional=True)
    steps: int = arg(3, "steps")
    lr: float = arg(1e-3, "lr")
    flag: bool = arg(False, "a bool")
    mode: Literal["a", "b"] = arg("a", "mode")
    maybe: int | None = arg(None, "optional")
    names: list[str] = arg(["x"], "names")


def test_parse_config_types_and_bools():
    cfg = parse_config(_Cfg, ["d", "--steps", "5", "--flag", "True", "--mode", "b", "--maybe", "7", "--names",
                              '["p","q"]'])
    assert (cfg.out_dir, cfg.steps, cfg.flag, cfg.mode, cfg.maybe, cfg.names) == ("d", 5, True, "b", 7, ["p", "q"])
    assert parse_config(_Cfg, ["--flag"]).flag is True
    assert parse_config(_Cfg, ["--flag", "false", "--names", "a,b"]).names == ["a", "b"]
    assert parse_config(_Cfg, ["--maybe", "None"]).maybe is None
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--flag", "maybe"])
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--mode", "c"])


def test_config_file_defaults_and_flags_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 9\nlr: 0.5\n")
    cfg = parse_config(_Cfg, ["--config", str(f), "--steps", "2"])
    assert cfg.steps == 2 and cfg.lr == 0.5
    with pytest.raises(LatentVLAError, match="unknown option"):
        config_from_dict(_Cfg, {"nope": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n")
    with pytest.raises(LatentVLAError, match=r"bad.yaml: cannot parse at line 2, column 1 \([^\n]*\)$"):
        parse_config(_Cfg, ["--config", str(bad)])  # one line: the CLI prints the message as is


def test_cli_help_fast_and_lists_commands():
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "latentvla", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert time.time() - t < 3
    for path in COMMANDS:
        assert path.split(" ")[0] in out


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_subcommand_help(path):
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "latentvla", *path.split(" "), "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert time.time() - t < 3, f"'latentvla {path} --help' is slow: import heavy modules lazily"
    assert "--" in r.stdout


def test_unknown_command_is_clear(capsys):
    assert main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["data", "nope"]) == 2
    assert "run 'latentvla data --help'" in capsys.readouterr().err


def test_platform_registry_and_validation():
    p = get_platform("libero")
    assert (p.chunk_len, p.action_dim, p.proprio_dim) == (8, 7, 8)
    assert get_platform("aloha").chunk_len == 25
    with pytest.raises(LatentVLAError, match="unknown robot platform 'nope'.*libero"):
        get_platform("nope")
    with pytest.raises(LatentVLAError, match="action_norm_mask"):
        Platform("bad", 4, 3, 2, "bounds", (True,), (True, True))
    with pytest.raises(LatentVLAError, match="normalization"):
        Platform("bad", 4, 1, 1, "zscore", (True,), (True,))  # type: ignore[arg-type]
    register_platform(Platform("mine", 4, 2, 1, "bounds", (True, True), (True,)))
    assert get_platform("mine").action_dim == 2


def test_normalize_roundtrip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    x[:, 2] = 5.0  # constant dim
    stats = {"q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0), "min": x.min(0), "max": x.max(0)}
    mask = (True, False, True)
    y = normalize(x, stats, mask, "bounds")
    assert np.all(np.abs(y[:, [0, 2]]) <= 1) and np.all(y[:, 2] == 0) and np.allclose(y[:, 1], x[:, 1])
    back = unnormalize(y, stats, mask, "bounds")
    assert np.allclose(back, x, atol=1e-5)


def test_atomic_outputs(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"k": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"k": 1}
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "d") as d:
            (d / "x").write_text("partial")
            raise RuntimeError("crash")
    assert not (tmp_path / "d").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
