"""`tf.train.Example` protobuf encode/decode, written by hand (no protobuf / TensorFlow).

Wire schema (tensorflow/core/example/{example,feature}.proto):

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }      # map entry: key = 1, value = 2
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

API:
    encode_example(features) -> bytes
        values: list/tuple of bytes|str -> bytes_list; float arrays -> float_list (float32);
        int/bool arrays -> int64_list. Map entries are written in the dict's order (pass a dict whose
        order is the one you want; `TFDSWriter` uses sorted keys = protobuf deterministic order).
    decode_example(data, keys=None) -> dict[str, np.ndarray(float32|int64) | list[bytes]]
        in file order; `keys` restricts decoding to those names (others are skipped unparsed).
    scan_example(data) -> dict[str, FeatureSpan]
        where each feature's payload lies inside `data` (for byte-range indexes), no copying.
    bytes_list_spans(data, span) -> list[(start, end)]   each item of a bytes_list feature.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from latentvla.errors import LatentVLAError

BYTES, FLOAT, INT64 = 1, 2, 3
KIND_NAMES = {BYTES: "bytes_list", FLOAT: "float_list", INT64: "int64_list"}


class ExampleDecodeError(LatentVLAError):
    """A record is not a well-formed tf.train.Example."""

    where: str | None = None  # set by `record_context`: the shard and offset it came from


@contextlib.contextmanager
def record_context(where: str) -> Iterator[None]:
    """Decode errors raised inside name the record (`where`: shard path and byte offset).

    Readers wrap the decoding of each record they read in it, so a record whose CRCs match but
    whose payload is garbage is reported like any other corruption, with its shard and offset."""
    try:
        yield
    except ExampleDecodeError as e:
        if e.where is not None:
            raise
        err = ExampleDecodeError(f"{where}: not a valid tf.train.Example ({e}); its CRCs match, so the shard "
                                 "was written with these bytes: rewrite or re-download it")
        err.where = where
        raise err from None


def _malformed(fn):
    """Any parsing failure (bad UTF-8 key, a length past the end, ...) -> ExampleDecodeError."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExampleDecodeError:
            raise
        except (UnicodeDecodeError, struct.error, IndexError, ValueError, OverflowError) as e:
            raise ExampleDecodeError(f"tf.train.Example: malformed record ({type(e).__name__}: {e})") from None

    return wrapper


# ----------------------------------------------------------------------------- varints

def _varint(value: int) -> bytes:
    if value < 0:
        value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ExampleDecodeError("tf.train.Example: truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ExampleDecodeError("tf.train.Example: varint too long")


def _len_field(field_number: int, payload: bytes) -> bytes:
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def _encode_int64_packed(values: np.ndarray) -> bytes:
    vals = np.asarray(values, dtype=np.int64).ravel()
    if vals.size and vals.min() >= 0 and vals.max() < 0x80:
        return vals.astype(np.uint8).tobytes()  # fast path: all one-byte varints
    return b"".join(_varint(int(v)) for v in vals)


def _decode_int64_packed(buf) -> np.ndarray:
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (arr < 0x80).all():
        return arr.astype(np.int64)
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        v, pos = _read_varint(buf, pos, end)
        if v >= 1 << 63:
            v -= 1 << 64
        out.append(v)
    return np.asarray(out, dtype=np.int64)


# ----------------------------------------------------------------------------- encode

def encode_feature(value) -> bytes:
    """Serialize one `Feature` message."""
    if isinstance(value, (bytes, bytearray, str)):
        value = [value]
    if isinstance(value, (list, tuple)) and (not value or isinstance(value[0], (bytes, bytearray, str, np.bytes_))):
        if value and not isinstance(value[0], (bytes, bytearray, str, np.bytes_)):
            raise LatentVLAError("encode_example: mixed bytes and non-bytes values")
        items = b"".join(_len_field(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in value)
        return _len_field(BYTES, items)
    arr = np.asarray(value)
    if arr.dtype.kind in "SO":
        return encode_feature([bytes(x) for x in arr.ravel()])
    if arr.dtype.kind == "U":
        return encode_feature([str(x) for x in arr.ravel()])
    if arr.dtype.kind == "f":
        arr = arr.astype("<f4", copy=False).ravel()
        payload = _len_field(1, arr.tobytes()) if arr.size else b""
        return _len_field(FLOAT, payload)
    if arr.dtype.kind in "biu":
        payload = _len_field(1, _encode_int64_packed(arr)) if arr.size else b""
        return _len_field(INT64, payload)
    raise LatentVLAError(f"encode_example: unsupported value dtype {arr.dtype}")


def _map_entries(features: Mapping[str, object]) -> bytes:
    return b"".join(_len_field(1, _len_field(1, key.encode("utf-8")) + _len_field(2, encode_feature(value)))
                    for key, value in features.items())


def encode_example(features: Mapping[str, object]) -> bytes:
    """Serialize a `tf.train.Example` (map entries in the mapping's order)."""
    return _len_field(1, _map_entries(features))


def append_features(record: bytes, extra: Mapping[str, object], where: str = "record") -> bytes:
    """`record` (a serialized Example) with `extra` added to its `Features` map; its own entries keep
    their bytes (the result is valid protobuf: TFDS and our reader parse it as one Example)."""
    body = b""
    if record:
        if record[0] != 0x0A:
            raise LatentVLAError(f"{where}: not a tf.train.Example (first tag {record[0]:#x})")
        try:
            n, pos = _read_varint(record, 1, len(record))
        except ExampleDecodeError:
            raise LatentVLAError(f"{where}: truncated tf.train.Example header") from None
        if pos + n != len(record):
            raise LatentVLAError(f"{where}: tf.train.Example has {len(record) - pos - n} trailing byte(s)")
        body = record[pos:]
    return _len_field(1, body + _map_entries(extra))


# ----------------------------------------------------------------------------- decode

@dataclass(frozen=True)
class FeatureSpan:
    """A feature's list payload inside a serialized Example: data[start:end], of `kind`.

    For float/int64 lists the range holds the packed values (unpacked encodings are not produced
    by TensorFlow; they are decoded but `packed` is False and `start/end` cover the raw list).
    """

    kind: int
    start: int
    end: int
    packed: bool = True


def _parse_list(data, start: int, end: int, kind: int) -> tuple[int, int, bool]:
    """Locate the packed payload inside a Float/Int64/BytesList message [start, end)."""
    if start == end:
        return start, start, True
    if kind == BYTES:
        return start, end, True
    tag, pos = _read_varint(data, start, end)
    if tag == (1 << 3) | 2:  # packed
        n, pos = _read_varint(data, pos, end)
        if pos + n == end:
            return pos, end, True
    return start, end, False  # unpacked or several packed chunks: decode generically


@_malformed
def scan_example(data: bytes | memoryview, keys: Iterable[str] | None = None) -> dict[str, FeatureSpan]:
    """Map feature name -> FeatureSpan, in file order, without copying payloads."""
    wanted = None if keys is None else set(keys)
    out: dict[str, FeatureSpan] = {}
    mv = memoryview(data)
    end = len(mv)
    pos = 0
    while pos < end:
        tag, pos = _read_varint(mv, pos, end)
        if tag != (1 << 3) | 2:
            pos = _skip(mv, tag, pos, end)
            continue
        n, pos = _read_varint(mv, pos, end)
        fend = pos + n
        if fend > end:
            raise ExampleDecodeError("tf.train.Example: truncated Features message")
        while pos < fend:  # map entries
            tag, pos = _read_varint(mv, pos, fend)
            n, pos = _read_varint(mv, pos, fend)
            eend = pos + n
            if tag != (1 << 3) | 2 or eend > fend:
                raise ExampleDecodeError("tf.train.Example: malformed feature map entry")
            key = None
            span = None
            while pos < eend:
                tag, pos = _read_varint(mv, pos, eend)
                if tag == (1 << 3) | 2:  # key
                    n, pos = _read_varint(mv, pos, eend)
                    key = bytes(mv[pos:pos + n]).decode("utf-8")
                    pos += n
                elif tag == (2 << 3) | 2:  # Feature
                    n, pos = _read_varint(mv, pos, eend)
                    vend = pos + n
                    span = FeatureSpan(BYTES, pos, pos, True)  # empty Feature = empty bytes list
                    while pos < vend:
                        tag, pos = _read_varint(mv, pos, vend)
                        kind = tag >> 3
                        if tag & 7 != 2 or kind not in KIND_NAMES:
                            pos = _skip(mv, tag, pos, vend)
                            continue
                        n, pos = _read_varint(mv, pos, vend)
                        s, e, packed = _parse_list(mv, pos, pos + n, kind)
                        span = FeatureSpan(kind, s, e, packed)
                        pos += n
                else:
                    pos = _skip(mv, tag, pos, eend)
            if key is None:
                raise ExampleDecodeError("tf.train.Example: feature map entry without a key")
            if wanted is None or key in wanted:
                out[key] = span if span is not None else FeatureSpan(BYTES, 0, 0, True)
            pos = eend
    return out


def _skip(data, tag: int, pos: int, end: int) -> int:
    wire = tag & 7
    if wire == 0:
        _, pos = _read_varint(data, pos, end)
        return pos
    if wire == 1:
        return pos + 8
    if wire == 2:
        n, pos = _read_varint(data, pos, end)
        return pos + n
    if wire == 5:
        return pos + 4
    raise ExampleDecodeError(f"tf.train.Example: unsupported wire type {wire}")


@_malformed
def bytes_list_spans(data: bytes | memoryview, span: FeatureSpan) -> list[tuple[int, int]]:
    """(start, end) of every item of a bytes_list feature, relative to `data`."""
    out = []
    pos, end = span.start, span.end
    while pos < end:
        tag, pos = _read_varint(data, pos, end)
        n, pos = _read_varint(data, pos, end)
        if tag != (1 << 3) | 2 or pos + n > end:
            raise ExampleDecodeError("tf.train.Example: malformed bytes_list")
        out.append((pos, pos + n))
        pos += n
    return out


@_malformed
def decode_span(data: bytes | memoryview, span: FeatureSpan):
    """The value of one feature: float32 / int64 array or list of bytes."""
    mv = memoryview(data)
    if span.kind == BYTES:
        return [bytes(mv[s:e]) for s, e in bytes_list_spans(mv, span)]
    if span.packed:
        if span.kind == FLOAT:
            if (span.end - span.start) % 4:
                raise ExampleDecodeError("tf.train.Example: float_list length not a multiple of 4")
            return np.frombuffer(mv[span.start:span.end], dtype="<f4").astype(np.float32)
        return _decode_int64_packed(mv[span.start:span.end])
    # Generic: repeated field, packed chunks and/or individual values.
    vals: list = []
    pos, end = span.start, span.end
    while pos < end:
        tag, pos = _read_varint(mv, pos, end)
        wire = tag & 7
        if wire == 2:
            n, pos = _read_varint(mv, pos, end)
            chunk = bytes(mv[pos:pos + n])
            pos += n
            vals.extend(np.frombuffer(chunk, "<f4").tolist() if span.kind == FLOAT
                        else _decode_int64_packed(chunk).tolist())
        elif wire == 5 and span.kind == FLOAT:
            vals.append(struct.unpack_from("<f", mv, pos)[0])
            pos += 4
        elif wire == 0 and span.kind == INT64:
            v, pos = _read_varint(mv, pos, end)
            vals.append(v - (1 << 64) if v >= 1 << 63 else v)
        else:
            raise ExampleDecodeError("tf.train.Example: malformed numeric list")
    return np.asarray(vals, dtype=np.float32 if span.kind == FLOAT else np.int64)


def decode_example(data: bytes | memoryview, keys: Sequence[str] | None = None) -> dict[str, object]:
    """Parse a serialized `tf.train.Example` into {name: np.ndarray | list[bytes]} (file order)."""
    spans = scan_example(data, keys)
    return {k: decode_span(data, s) for k, s in spans.items()}
