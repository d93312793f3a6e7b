"""Writers of tiny event datasets in their published on-disk formats (byte by byte, independent
of the readers under test): N-MNIST / N-Caltech101 ``.bin``, DVS-Gesture ``.npy``, Prophesee
``.dat`` + GEN1 ``_bbox.npy``, N-Caltech101 box annotations."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# GEN1 _bbox.npy as published (v1 files name the time field "ts"; later Prophesee tools "t").
GEN1_BBOX_DTYPE = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"),
                            ("class_id", "u1"), ("confidence", "<f4"), ("track_id", "<u4")])


def random_events(rng: np.random.Generator, n: int, width: int, height: int, t_max: int) -> dict[str, np.ndarray]:
    """Columns x, y, t (sorted, us), p of ``n`` random events."""
    return {"x": rng.integers(0, width, n), "y": rng.integers(0, height, n),
            "t": np.sort(rng.integers(0, t_max, n)), "p": rng.integers(0, 2, n)}


def write_atis_bin(path: Path, ev: dict[str, np.ndarray]) -> None:
    """N-MNIST / N-Caltech101: 5 bytes per event: x, y, p<<7 | t[22:16], t[15:8], t[7:0]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = bytearray()
    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"]):
        out += bytes([int(x), int(y), (int(p) << 7) | ((int(t) >> 16) & 0x7F), (int(t) >> 8) & 0xFF, int(t) & 0xFF])
    path.write_bytes(bytes(out))


def write_gesture_npy(path: Path, ev: dict[str, np.ndarray]) -> None:
    """DVS-Gesture (tonic's preprocessed release): ``[N, 4]`` columns x, y, p, t in milliseconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack([ev["x"], ev["y"], ev["p"], ev["t"] // 1000], axis=1).astype(np.int64))


def write_dat(path: Path, ev: dict[str, np.ndarray], width: int = 304, height: int = 240) -> None:
    """Prophesee DAT v2: '% ' header lines, type byte 0, size byte 8, then <u4 t, <u4 x|y<<14|p<<28."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"% Date 2016-01-01 00:00:00\n% Version 2\n% Width {width}\n% Height {height}\n".encode()
    body = b"".join(struct.pack("<II", int(t), int(x) | (int(y) << 14) | (int(p) << 28))
                    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"]))
    path.write_bytes(header + bytes([0, 8]) + body)


def write_gen1_boxes(path: Path, rows: list[tuple]) -> np.ndarray:
    """``_bbox.npy`` with the published GEN1 dtype; rows are (ts, x, y, w, h, class_id, conf, track)."""
    boxes = np.array(rows, dtype=GEN1_BBOX_DTYPE)
    np.save(path, boxes)
    return boxes


def write_ncaltech_annotation(path: Path, x0: int, y0: int, x1: int, y1: int) -> None:
    """N-Caltech101 annotation: int16 rows=2, cols=5, the box corners column-major (x, y pairs,
    closed), then the object contour the same way (here a triangle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    box = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    contour = [(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)]
    values = [2, len(box)] + [v for point in box for v in point] + [2, len(contour)] + [v for pt in contour for v in pt]
    path.write_bytes(struct.pack(f"<{len(values)}h", *values))
