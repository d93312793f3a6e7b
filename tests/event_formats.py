"""Writers of tiny event datasets in their published on-disk formats (byte by byte, independent
of the readers under test): N-MNIST / N-Caltech101 ``.bin``, DVS-Gesture ``.npy``, CIFAR10-DVS
``.aedat4``, Prophesee ``.dat`` + GEN1 ``_bbox.npy``, N-Caltech101 box annotations."""
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


def _fb_root_with(inline: list[tuple[str, object]], tail: bytes, identifier: bytes = b"",
                  tail_offset: int = 0) -> bytes:
    """Minimal flatbuffer builder: root table with scalar fields and one offset field to ``tail``.

    ``inline``: (kind, value) per field in schema order, kind in {"i32", "i64", "off"}; the one
    "off" field points at ``tail[tail_offset:]`` (a string or vector; ``tail`` starts 8-aligned).
    Layout: [root u32][identifier?][pad][vtable][table: soffset i32, pad, fields][pad][tail].
    """
    sizes = {"i32": 4, "i64": 8, "off": 4}
    n = len(inline)
    head = 4 + len(identifier)
    vtable_size = 4 + 2 * n
    vtable_at = head
    table_at = -(-(vtable_at + vtable_size) // 8) * 8  # table start, 8-aligned
    # place fields after the 4-byte soffset, each aligned to its size
    offsets, cursor = [], 4
    for kind, _ in inline:
        cursor = -(-cursor // sizes[kind]) * sizes[kind]
        offsets.append(cursor)
        cursor += sizes[kind]
    table_size = -(-cursor // 8) * 8
    tail_at = table_at + table_size
    buf = bytearray(tail_at + len(tail))
    struct.pack_into("<I", buf, 0, table_at)
    buf[4:4 + len(identifier)] = identifier
    struct.pack_into(f"<HH{n}H", buf, vtable_at, vtable_size, table_size, *offsets)
    struct.pack_into("<i", buf, table_at, table_at - vtable_at)
    for (kind, value), offset in zip(inline, offsets):
        at = table_at + offset
        if kind == "off":
            struct.pack_into("<I", buf, at, tail_at + tail_offset - at)
        else:
            struct.pack_into("<i" if kind == "i32" else "<q", buf, at, value)
    buf[tail_at:] = tail
    return bytes(buf)


def write_aedat4(path: Path, ev: dict[str, np.ndarray], width: int = 128, height: int = 128) -> None:
    """AEDAT 4 (DV): magic line, size-prefixed IOHeader flatbuffer (no compression, XML info node
    with one EVTS stream), then one packet: stream id, size, size-prefixed EventPacket flatbuffer
    ("EVTS") whose vector holds 16-byte events (t i64, x i16, y i16, on bool, 3 bytes padding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = ('<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
            '<node name="0" path="/mainloop/Recorder/outInfo/0/">'
            '<attr key="compression" type="string">NONE</attr>'
            '<attr key="typeIdentifier" type="string">EVTS</attr>'
            '<node name="info" path="/mainloop/Recorder/outInfo/0/info/">'
            f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
            '</node></node></node></dv>').encode()
    string = struct.pack("<I", len(info)) + info + b"\x00"
    header = _fb_root_with([("i32", 0), ("i64", -1), ("off", None)], string)
    events = b"".join(struct.pack("<qhh?3x", int(t), int(x), int(y), bool(p))
                      for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"]))
    vector = b"\x00" * 4 + struct.pack("<I", len(ev["t"])) + events  # structs start 8-aligned after the count
    packet = _fb_root_with([("off", None)], vector, identifier=b"EVTS", tail_offset=4)
    path.write_bytes(b"#!AER-DAT4.0\r\n" + struct.pack("<I", len(header)) + header
                     + struct.pack("<iI", 0, len(packet) + 4) + struct.pack("<I", len(packet)) + packet)
