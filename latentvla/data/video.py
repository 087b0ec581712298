"""mp4 camera video with PyAV: frames by presentation timestamp (AV1, H.264, ...); episodes encoded and appended.

    table = frame_table(path)                 # FrameTable: pts [F] int64 (sorted), key [F] bool, time_base
    k = table.nearest(query_seconds, where)   # frame numbers; a query with no frame within TOLERANCE_S raises
    dec = VideoDecoder(path)                  # keeps the container open
    dec.frame(pts, seek_pts) -> uint8 [H, W, 3]   # seek_pts: the keyframe at or before pts
    mp4 = encode_episode_video(frames, fps)   # uint8 [T, H, W, 3] -> one mp4 (for the LeRobot writer)
    VideoFile(path).append(mp4, T, fps)       # episodes back to back in one file, by stream copy

Frames are picked by the nearest pts (round, never floor: float32 timestamps such as 0.30000001
would otherwise land on the previous frame) within 1e-4 s. Decoding seeks to the preceding
keyframe and decodes forward; the frames decoded since that keyframe stay cached, so sequential
and within-GOP access never seek again. `VideoDecoder` objects belong to one process
(`latentvla.data.handles.Handles` leaves them alone in forked workers).
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.data.lerobot import INSTALL_HINT
from latentvla.errors import LatentVLAError

TOLERANCE_S = 1e-4
# codec name -> (encoder, info.json `video.codec`, encoder options besides GOP / CRF)
CODECS = {"libsvtav1": ("libsvtav1", "av1", {"preset": "12"}), "av1": ("libsvtav1", "av1", {"preset": "12"}),
          "h264": ("libx264", "h264", {}), "libx264": ("libx264", "h264", {})}
_CACHE_FRAMES = 8  # decoded frames kept per open video (several GOPs at lerobot's default GOP 2)


def import_av():
    try:
        import av
    except ImportError:
        raise LatentVLAError(f"reading LeRobot videos needs PyAV: {INSTALL_HINT}") from None
    return av


def _open(path: Path):
    av = import_av()
    if not path.is_file():
        raise LatentVLAError(f"{path}: video file missing")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise LatentVLAError(f"{path}: cannot open video (truncated or damaged?): {e}") from None
    if not container.streams.video:
        container.close()
        raise LatentVLAError(f"{path}: no video stream")
    return container


@dataclass
class FrameTable:
    path: Path
    pts: np.ndarray  # int64 [F], sorted presentation timestamps
    key: np.ndarray  # bool [F], keyframe flags
    time_base: float

    @property
    def seconds(self) -> np.ndarray:
        return self.pts * self.time_base

    def nearest(self, query: np.ndarray, where: str) -> np.ndarray:
        """Frame numbers whose pts is nearest each query time (seconds); a miss beyond TOLERANCE_S raises."""
        q = np.asarray(query, np.float64)
        secs = self.seconds
        if len(secs) == 0:
            raise LatentVLAError(f"{self.path}: video holds no frames (truncated?); needed for {where}")
        n = len(secs)
        at = np.searchsorted(secs, q)
        lo, hi = np.clip(at - 1, 0, n - 1), np.clip(at, 0, n - 1)
        k = np.where(np.abs(secs[lo] - q) <= np.abs(secs[hi] - q), lo, hi)
        err = np.abs(secs[k] - q)
        bad = np.flatnonzero(err > TOLERANCE_S)
        if len(bad):
            b = int(bad[0])
            raise LatentVLAError(
                f"{self.path}: no frame within {TOLERANCE_S:g} s of t={q[b]:.6f} s ({where}, row {b}; nearest frame "
                f"at {secs[k[b]]:.6f} s; the video holds {len(secs)} frames from {secs[0]:.6f} to {secs[-1]:.6f} s"
                f"{' — truncated?' if q[b] > secs[-1] else ''})")
        return k

    def seek_pts(self, frames: np.ndarray) -> np.ndarray:
        """pts of the keyframe at or before each frame."""
        kf = np.flatnonzero(self.key)
        if len(kf) == 0 or kf[0] != 0:
            kf = np.concatenate([[0], kf])  # decode from the start when the first frame is not flagged
        at = kf[np.searchsorted(kf, frames, side="right") - 1]
        return self.pts[at]


def frame_table(path: str | os.PathLike) -> FrameTable:
    """Demux (no decoding) the video stream: every frame's pts and keyframe flag."""
    av = import_av()
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        pts, key = [], []
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size:
                    pts.append(packet.pts)
                    key.append(packet.is_keyframe)
        except av.error.FFmpegError as e:
            raise LatentVLAError(f"{path}: cannot read video (truncated or damaged?): {e}") from None
        tb = float(stream.time_base) if stream.time_base else 1.0
    finally:
        container.close()
    order = np.argsort(np.asarray(pts, np.int64), kind="stable")
    return FrameTable(path, np.asarray(pts, np.int64)[order], np.asarray(key, bool)[order], tb)


class VideoDecoder:
    """One open video: frames by pts, decoding forward from the preceding keyframe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.container = _open(self.path)
        self.stream = self.container.streams.video[0]
        n = int(os.environ.get("LATENTVLA_VIDEO_THREADS", "1"))
        self.stream.codec_context.thread_count = max(0, n)  # 1 per DataLoader worker; 0 = FFmpeg's choice
        rate = self.stream.guessed_rate or self.stream.average_rate
        tb = self.stream.time_base
        self._step = float(1 / (rate * tb)) if rate and tb else 0.0  # pts ticks per frame
        self.seeks = 0
        self._frames = None  # live decode iterator after the last seek
        self._last = None  # pts of the last decoded frame
        # decoded frames by pts, converted to RGB only when asked for (a seek decodes the keyframe too,
        # which random access rarely needs: converting it would cost ~30% more than the target alone)
        self._cache: OrderedDict[int, object] = OrderedDict()

    def close(self) -> None:
        self._frames = None
        self.container.close()

    def _remember(self, pts: int, frame) -> None:
        self._cache[pts] = frame
        self._cache.move_to_end(pts)
        while len(self._cache) > _CACHE_FRAMES:
            self._cache.popitem(last=False)

    def frame(self, pts: int, seek_pts: int) -> np.ndarray:
        pts, seek_pts = int(pts), int(seek_pts)
        hit = self._cache.get(pts)
        if hit is not None:
            if not isinstance(hit, np.ndarray):
                hit = self._cache[pts] = hit.to_ndarray(format="rgb24")
            return hit
        av = import_av()
        # Continue decoding when the target lies ahead in the GOP being decoded, or its keyframe is the
        # very next frame (sequential reads); otherwise seek.
        ahead = self._last is not None and self._last < pts and seek_pts <= self._last + 1.5 * self._step
        if self._frames is None or not ahead:
            self.seeks += 1
            try:
                self.container.seek(seek_pts, stream=self.stream, backward=True, any_frame=False)
            except av.error.FFmpegError as e:
                raise LatentVLAError(f"{self.path}: cannot seek to pts {seek_pts} (truncated or damaged?): {e}") \
                    from None
            self._frames = self.container.decode(self.stream)
            self._last = None
        try:
            for f in self._frames:
                if f.pts is None:
                    continue
                self._last = int(f.pts)
                if self._last >= seek_pts:
                    if self._last == pts:
                        arr = f.to_ndarray(format="rgb24")
                        self._remember(self._last, arr)
                        return arr
                    self._remember(self._last, f)
                if self._last > pts:
                    break
        except av.error.FFmpegError as e:
            self._frames = None
            raise LatentVLAError(f"{self.path}: cannot decode frame at pts {pts} (truncated or damaged?): {e}") \
                from None
        self._frames = None
        raise LatentVLAError(f"{self.path}: no frame at pts {pts} (the video ends before it, or changed since "
                             "indexing — truncated?)")


# ----------------------------------------------------------------------------- writing

def encode_episode_video(frames: np.ndarray, fps: int, codec: str = "libsvtav1", crf: int = 30, gop: int = 2,
                         where: str = "video") -> bytes:
    """uint8 [T, H, W, 3] -> the bytes of one mp4 (yuv420p, frame k at k / fps)."""
    av = import_av()
    encoder, _, extra = CODECS[codec]
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise LatentVLAError(f"{where}: expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise LatentVLAError(f"{where}: frame size {h}x{w} must be even for yuv420p video")
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration to stderr at every start otherwise
    buf = io.BytesIO()
    try:
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream(encoder, rate=int(fps),
                                    options={"g": str(gop), "crf": str(crf), **extra})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for k, img in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                vf.pts = k
                out.mux(stream.encode(vf))
            out.mux(stream.encode(None))
    except av.FFmpegError as e:
        raise LatentVLAError(f"{where}: {encoder} failed to encode {len(frames)} frames of {h}x{w} ({e})") from None
    return buf.getvalue()


class VideoFile:
    """One camera's mp4 that episodes are appended to by stream copy."""

    def __init__(self, path: Path):
        self.path, self.container, self.stream, self.frames, self.bytes = path, None, None, 0, 0

    def append(self, mp4: bytes, num_frames: int, fps: int) -> float:
        """Append an episode's mp4; returns its start time (seconds) in this file."""
        av = import_av()
        start = self.frames / fps
        with av.open(io.BytesIO(mp4), "r") as src:
            ist = src.streams.video[0]
            if self.container is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.container = av.open(str(self.path), "w", format="mp4")
                self.stream = self.container.add_stream_from_template(ist, opaque=True)
            offset = round(start / ist.time_base)
            for p in src.demux(ist):
                if p.dts is None:  # the demuxer's end-of-stream packet
                    continue
                p.pts, p.dts = p.pts + offset, p.dts + offset
                p.stream = self.stream
                self.bytes += p.size
                self.container.mux(p)
        self.frames += num_frames
        return start

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
