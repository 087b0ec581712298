"""Run a script under `torchrun --nproc_per_node 2` for the multi-process tests.

torch 2.13's CPU (gloo) FSDP2 runs occasionally abort at interpreter exit, after all work and
the final barrier: one rank dies with "terminate called without an active exception" (SIGABRT,
no Python frame) and torchrun reports failure. Seen in ~1 of 15-30 loaded runs, never mid-run;
the tests accept exactly that signature and then check the run's outputs as usual.
"""

from __future__ import annotations

import os
import subprocess
import sys

EXIT_ABORT = "terminate called without an active exception"


def torchrun(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], capture_output=True, text=True, env=env, timeout=timeout)


def completed(r: subprocess.CompletedProcess) -> bool:
    """Exit 0, or only the known exit-time abort (the caller still checks every output)."""
    return r.returncode == 0 or EXIT_ABORT in r.stderr
