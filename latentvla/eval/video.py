"""Episode videos: MP4 (H.264 via imageio-ffmpeg), written atomically.

Needs `imageio` and `imageio-ffmpeg` (extras `[video]`, `[libero]`, `[metaworld]`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latentvla.errors import LatentVLAError


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """Write uint8 HxWx3 frames to `path` (.mp4). Empty `frames` is an error."""
    if len(frames) == 0:
        raise LatentVLAError(f"{path}: no frames to write")
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise LatentVLAError("saving videos needs imageio and imageio-ffmpeg: pip install -e '.[video]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp name keeps the .mp4 suffix (ffmpeg picks the container from it), then an atomic rename.
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix or '.mp4'}")
    try:
        # macro_block_size=1 keeps odd sizes as they are (no silent resize).
        writer = imageio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    macro_block_size=1, ffmpeg_log_level="error")
        try:
            for frame in frames:
                writer.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
        finally:
            writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
