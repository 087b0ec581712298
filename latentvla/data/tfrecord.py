"""TFRecord framing: read (CRC32C verified) and write, no TensorFlow.

Each record on disk is

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2**32). Both CRCs are checked on read; a
mismatch or a truncated tail raises `LatentVLAError` naming the file and the record's byte offset.

API:
    iter_records(path, verify=True) -> Iterator[(offset, payload)]
    read_record_at(path_or_file, offset, verify=True) -> bytes        (random access via an index)
    write_records(path, records) -> list[int]                         (atomic; returns offsets)
    frame_record(payload) -> bytes
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from latentvla.data.staging import WriterContext
from latentvla.errors import LatentVLAError

_HEADER = 12  # uint64 length + uint32 crc
_FOOTER = 4
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes | memoryview) -> int:
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    """One record in TFRecord framing."""
    length = struct.pack("<Q", len(payload))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), payload,
                     struct.pack("<I", masked_crc32c(payload))))


def _read_one(f: BinaryIO, path: str | os.PathLike, offset: int, verify: bool, file_size: int | None) -> bytes | None:
    """Read the record starting at `offset` (f positioned there). None at a clean end of file."""
    header = f.read(_HEADER)
    if not header:
        return None
    if len(header) < _HEADER:
        raise LatentVLAError(f"{path}: truncated TFRecord at offset {offset}: {len(header)} header bytes, "
                             f"expected {_HEADER}")
    (length,) = struct.unpack_from("<Q", header, 0)
    (len_crc,) = struct.unpack_from("<I", header, 8)
    if verify and masked_crc32c(header[:8]) != len_crc:
        raise LatentVLAError(f"{path}: corrupt TFRecord at offset {offset}: length CRC32C mismatch (flipped byte or "
                             "not a TFRecord file)")
    if file_size is not None and offset + _HEADER + length + _FOOTER > file_size:
        raise LatentVLAError(
            f"{path}: truncated TFRecord at offset {offset}: record needs {length + _FOOTER} bytes after its header, "
            f"file has {max(file_size - offset - _HEADER, 0)}")
    body = f.read(length + _FOOTER)
    if len(body) < length + _FOOTER:
        raise LatentVLAError(f"{path}: truncated TFRecord at offset {offset}: record needs {length + _FOOTER} bytes, "
                             f"got {len(body)}")
    data = body[:length]
    if verify:
        (data_crc,) = struct.unpack_from("<I", body, length)
        if masked_crc32c(data) != data_crc:
            raise LatentVLAError(f"{path}: corrupt TFRecord at offset {offset}: data CRC32C mismatch ({length} bytes)")
    return data


def iter_records(path: str | os.PathLike, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield (byte offset, payload) for every record of a TFRecord file."""
    path = Path(path)
    if not path.is_file():
        raise LatentVLAError(f"{path}: TFRecord file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while True:
            data = _read_one(f, path, offset, verify, size)
            if data is None:
                return
            yield offset, data
            offset += _HEADER + len(data) + _FOOTER


def read_record_at(source: str | os.PathLike | BinaryIO, offset: int, verify: bool = True,
                   path_hint: str | None = None) -> bytes:
    """Read the single record that starts at byte `offset` (from an index)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return read_record_at(f, offset, verify, str(source))
    f = source
    f.seek(offset)
    data = _read_one(f, path_hint or getattr(f, "name", "<stream>"), offset, verify, None)
    if data is None:
        raise LatentVLAError(f"{path_hint or getattr(f, 'name', '<stream>')}: no TFRecord at offset "
                             f"{offset} (end of file)")
    return data


def count_records(path: str | os.PathLike, verify: bool = False) -> int:
    return sum(1 for _ in iter_records(path, verify=verify))


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> list[int]:
    """Write records atomically (temp name + rename). Returns each record's byte offset."""
    from latentvla.utils.atomic import atomic_path

    offsets: list[int] = []
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pos = 0
            for payload in records:
                framed = frame_record(bytes(payload))
                offsets.append(pos)
                f.write(framed)
                pos += len(framed)
    return offsets


class RecordWriter(WriterContext):
    """Incremental writer (for large shards); the file appears at `path` only on `close()`."""

    def __init__(self, path: str | os.PathLike):
        from latentvla.utils.atomic import _tmp_name

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_name(self.path)
        self._f: BinaryIO | None = open(self._tmp, "wb")
        self.offsets: list[int] = []
        self.num_bytes = 0

    def write(self, payload: bytes) -> int:
        assert self._f is not None, "writer closed"
        framed = frame_record(bytes(payload))
        self.offsets.append(self.num_bytes)
        self._f.write(framed)
        self.num_bytes += len(framed)
        return self.offsets[-1]

    def close(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tmp.exists():
            self._tmp.unlink()
