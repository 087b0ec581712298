"""Run episodes in N worker processes (rendering is the CPU bottleneck), simulator independent.

`split_contiguous(items, n)` cuts the pending episodes (ordered by task) into n contiguous
slices, so each worker builds an environment once per task it meets. `run_in_workers(target,
payloads, on_result)` starts one process per payload (spawn context: no forked EGL/OpenGL or
torch state), forwards every result to `on_result` in the parent (the single writer of the
results file), and re-raises a worker's error with its message. With one payload the target
runs in this process.

A target is a module-level function `target(payload, emit)`; it calls `emit(record)` per
finished episode.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from latentvla.errors import LatentVLAError

T = TypeVar("T")


def split_contiguous(items: Sequence[T], n: int) -> list[list[T]]:
    """Split into at most n non-empty contiguous slices of near-equal size."""
    n = max(1, min(n, len(items)))
    size, rem = divmod(len(items), n)
    bounds = [i * size + min(i, rem) for i in range(n + 1)]  # the first `rem` slices take one more
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _worker_main(target: Callable, payload: Any, q: mp.Queue) -> None:
    try:
        target(payload, lambda rec: q.put(("result", rec)))
        q.put(("done", None))
    except LatentVLAError as e:
        q.put(("error", str(e)))
    except BaseException as e:  # report, don't hang the parent
        q.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_in_workers(target: Callable[[Any, Callable[[dict], None]], None], payloads: Sequence[Any],
                   on_result: Callable[[dict], None]) -> None:
    if not payloads:
        return
    if len(payloads) == 1:
        target(payloads[0], on_result)
        return
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(target, p, q), daemon=True) for p in payloads]
    for p in procs:
        p.start()
    running, errors = len(procs), []
    try:
        while running:
            try:
                kind, value = q.get(timeout=5.0)
            except queue_mod.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead and q.empty():
                    raise LatentVLAError(f"evaluation worker died (exit code {dead[0].exitcode}); "
                                         "see the log above") from None
                continue
            if kind == "result":
                on_result(value)
            else:
                running -= 1
                if kind == "error":
                    errors.append(value)
        if errors:
            raise LatentVLAError(f"evaluation worker failed: {errors[0]}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
