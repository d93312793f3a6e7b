"""Prophesee ``.dat`` event files (GEN1 automotive): header, memory-mapped records, decoding.

Layout (Prophesee's published DAT format): ASCII header lines starting with ``"% "``
(``% Height 240``, ``% Width 304``, ``% Version 2`` ...), then one byte event type (0: CD
events) and one byte event size (8), then little-endian records of two uint32 words (a file
without the header is read only when the caller says it is headerless: any file's bytes would
otherwise pass for records):

    word 0: timestamp in microseconds
    word 1: x = bits 0-13, y = bits 14-27, polarity = bits 28-31 (1 ON, 0 OFF)

:func:`decode` unpacks records with a handful of vectorised numpy passes per cache-sized block.
A whole file decodes about as fast as with ``expelliarmus`` (``benchmarks/events.py``, figures in
benchmarks/RESULTS.md), and a memory map lets a GEN1 sample decode only its own window.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECORD_DTYPE = np.dtype([("t", "<u4"), ("data", "<u4")])
# Decoded events: the field names tonic's transforms expect.
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "<i1")])
X_MASK, Y_SHIFT, Y_MASK, P_SHIFT = 0x3FFF, 14, 0x3FFF, 28
CD_EVENTS = 0  # the event type byte of change-detection (CD) events


@dataclass(frozen=True)
class DatHeader:
    """What the header of a ``.dat`` file says; ``offset`` is where the records start."""

    offset: int
    event_type: int
    event_size: int
    width: int | None
    height: int | None


def _size(path: str | Path, line: bytes) -> int:
    """The number of a ``% Width N`` / ``% Height N`` header line; errors name the file and the line."""
    words = line.decode("latin-1").split()
    if len(words) < 3 or not words[2].isdigit():
        raise ValueError(f"{path}: malformed header line {line.decode('latin-1').rstrip()!r}: expected "
                         f"'% {words[1]} <integer>'")
    return int(words[2])


def read_header(path: str | Path, headerless: bool = False) -> DatHeader:
    """Parse the ``%`` header lines and the (type, size) bytes; errors name the file. A file without
    ``%`` lines is refused unless ``headerless`` (legacy files: CD events of 8 bytes from byte 0)."""
    width = height = None
    with open(path, "rb") as f:
        lines = 0
        while True:
            start = f.tell()
            line = f.readline()
            if not line.startswith(b"% "):
                break
            key = line[2:].split(maxsplit=1)[:1]
            if key == [b"Width"]:
                width = _size(path, line)
            elif key == [b"Height"]:
                height = _size(path, line)
            lines += 1
        if not lines and not headerless:
            raise ValueError(f"{path}: not a Prophesee .dat event file (no '% ' header lines); if it is a "
                             "headerless legacy file of CD events, say so (predict.py: --headerless)")
        f.seek(start)
        kind = f.read(2) if lines else bytes([CD_EVENTS, RECORD_DTYPE.itemsize])
        offset = f.tell()
    if len(kind) < 2:
        raise ValueError(f"{path}: truncated .dat file (no event type/size bytes after the header)")
    if kind[0] != CD_EVENTS or kind[1] != RECORD_DTYPE.itemsize:
        raise ValueError(f"{path}: event type {kind[0]} of {kind[1]} bytes, expected type {CD_EVENTS} of "
                         f"{RECORD_DTYPE.itemsize} bytes (CD events)")
    return DatHeader(offset, kind[0], kind[1], width, height)


def open_records(path: str | Path, headerless: bool = False) -> tuple[DatHeader, np.ndarray]:
    """Header and the raw records as a read-only memory map (nothing decoded yet)."""
    header = read_header(path, headerless)
    size = Path(path).stat().st_size - header.offset
    if size % RECORD_DTYPE.itemsize:
        raise ValueError(f"{path}: {size} bytes of records is not a multiple of {RECORD_DTYPE.itemsize}")
    if size == 0:
        return header, np.zeros(0, RECORD_DTYPE)
    return header, np.memmap(path, RECORD_DTYPE, mode="r", offset=header.offset)


def decode(records: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """Raw records ``[N]`` -> structured events ``[N]`` with fields t (us), x, y, p (0/1).

    Works through ``chunk`` records at a time so each block is read from memory once and its
    few unpacking passes run in cache; results go straight into the int16/int8 fields (the
    casts keep the low bits, the masks do the rest).
    """
    out = np.empty(len(records), EVENT_DTYPE)
    scratch = np.empty(chunk, np.uint32)
    for start in range(0, len(records), chunk):
        words = np.ascontiguousarray(records[start:start + chunk]).view(np.uint32).reshape(-1, 2)
        block, tmp, data = out[start:start + chunk], scratch[:len(words)], words[:, 1]
        block["t"] = words[:, 0]
        np.bitwise_and(data, X_MASK, out=block["x"], casting="unsafe")
        np.right_shift(data, Y_SHIFT, out=tmp)
        np.bitwise_and(tmp, Y_MASK, out=block["y"], casting="unsafe")
        np.right_shift(data, P_SHIFT, out=block["p"], casting="unsafe")
    return out


def read_events(path: str | Path, t_start: int | None = None, t_end: int | None = None,
                headerless: bool = False) -> np.ndarray:
    """Decoded events of a ``.dat`` file with ``t_start <= t < t_end`` (bounds optional).

    Timestamps are sorted in these files, so the window is found by binary search on the
    memory map and only its records are decoded (a GEN1 sample never reads the whole file).
    """
    _, records = open_records(path, headerless)
    times = records["t"]  # a strided view of the map: bisect reads ~log2(N) entries, nothing is copied
    lo = 0 if t_start is None else bisect.bisect_left(times, t_start)
    hi = len(records) if t_end is None else bisect.bisect_left(times, t_end)
    return decode(records[lo:max(lo, hi)])


def write_dat(path: str | Path, events: np.ndarray, width: int = 304, height: int = 240) -> None:
    """Write events (fields t, x, y, p) as a version-2 ``.dat`` file (fixtures, conversions)."""
    header = (f"% Data file containing CD events.\n% Version 2\n% Width {width}\n% Height {height}\n"
              f"% end\n").encode()
    records = np.empty(len(events), RECORD_DTYPE)
    records["t"] = events["t"]
    records["data"] = (events["x"].astype(np.uint32) | (events["y"].astype(np.uint32) << Y_SHIFT)
                       | (events["p"].astype(np.uint32) << P_SHIFT))
    with open(path, "wb") as f:
        f.write(header + bytes([0, RECORD_DTYPE.itemsize]) + records.tobytes())
