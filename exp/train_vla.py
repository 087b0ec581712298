"""Paper-compatible entry point: `torchrun --nnodes=1 --nproc_per_node=N exp/train_vla.py --vla_id ... ...`.

A thin shim: every flag goes to `latentvla train` (see `latentvla train --help`).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from latentvla.cli import run_command  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:]))
