"""Open files of one process: raw fds for `pread` (RLDS shards) and video decoders (LeRobot mp4s).

Datasets keep one `Handles`; it pickles empty (spawned DataLoader workers open their own) and
starts afresh in a forked child (never shares the parent's file offsets or decoder state).
"""

from __future__ import annotations

import os
from collections import OrderedDict

from latentvla.errors import LatentVLAError

# Open decoders per process, least recently used closed first: a v2.1 dataset has one mp4 per
# episode and camera (thousands), each decoder holds codec state and a few cached frames.
MAX_OPEN_VIDEOS = int(os.environ.get("LATENTVLA_MAX_OPEN_VIDEOS", "64"))

# Decoders inherited through fork are never freed in the child: freeing one joins the codec's
# worker threads, which do not exist there (a forked DataLoader worker would hang).
_INHERITED: list = []


class Handles:
    def __init__(self):
        self._pid = os.getpid()
        self._fds: dict[str, int] = {}
        self._videos: OrderedDict[str, object] = OrderedDict()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked child: the parent's handles stay the parent's
            _INHERITED.append(self._videos)
            self._pid, self._fds, self._videos = os.getpid(), {}, OrderedDict()

    def pread(self, path, start: int, end: int) -> bytes:
        self._check_pid()
        key = str(path)
        fd = self._fds.get(key)
        if fd is None:
            try:
                fd = os.open(key, os.O_RDONLY)
            except OSError as e:
                raise LatentVLAError(f"{key}: cannot open shard ({e.strerror})") from None
            self._fds[key] = fd
        data = os.pread(fd, end - start, start)
        if len(data) != end - start:
            raise LatentVLAError(f"{key}: shard is shorter than its index (read {len(data)} of {end - start} bytes at "
                                 f"offset {start}); it changed after indexing — delete its .latentvla_cache")
        return data

    def video(self, path):
        """The open `VideoDecoder` of `path` (opened on first use in this process)."""
        self._check_pid()
        key = str(path)
        dec = self._videos.get(key)
        if dec is None:
            from latentvla.data.video import VideoDecoder

            while len(self._videos) >= max(1, MAX_OPEN_VIDEOS):
                self._videos.popitem(last=False)[1].close()
            dec = self._videos[key] = VideoDecoder(path)
        else:
            self._videos.move_to_end(key)
        return dec

    def close(self) -> None:
        self._check_pid()  # in a forked child: leaves the parent's handles alone
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        for dec in self._videos.values():
            try:
                dec.close()
            except Exception:  # closing at interpreter exit: nothing useful to report
                pass
        self._fds, self._videos = {}, OrderedDict()

    def __del__(self) -> None:
        self.close()
