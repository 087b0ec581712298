"""CI end-to-end run of `latentvla demo --scale tiny` (all stages, all five variants).

Marked `slow` and `metaworld`; part of the default suite (CI runs it: about a minute on an idle
2-core machine). LATENTVLA_DEMO_TEST=0 skips it for quick local runs.
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = [
    pytest.mark.metaworld,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LATENTVLA_DEMO_TEST") == "0",
                       reason="demo end-to-end run skipped by LATENTVLA_DEMO_TEST=0"),
]


def test_demo_tiny_end_to_end(tmp_path):
    from latentvla.eval.metaworld_env import configure_rendering

    configure_rendering()
    pytest.importorskip("metaworld", reason="needs the [metaworld] extra")
    from latentvla.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--scale", "tiny", "--output_dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"random", "expert", "baseline", "la_align", "la_direct", "la_cond", "la_tok"}
    assert rows["expert"]["success_rate"] == 1.0
    for v in ("baseline", "la_align", "la_direct", "la_cond", "la_tok"):
        assert rows[v]["success_rate"] is not None and rows[v]["final_l1"] is not None, rows[v]
    assert (out / "success_rates.png").read_bytes()[:4] == b"\x89PNG"
    assert len(res["videos"]) >= 5 and all((out / v).stat().st_size > 0 for v in res["videos"])
    # resumable: a second run skips every stage and rewrites nothing
    before = (out / "results.json").stat().st_mtime_ns
    assert main(["demo", "--scale", "tiny", "--output_dir", str(out)]) == 0
    assert (out / "results.json").stat().st_mtime_ns == before
