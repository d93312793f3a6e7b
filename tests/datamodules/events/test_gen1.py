"""GEN1: .dat records and _bbox.npy written byte by byte, read back field by field."""
import numpy as np
import pytest
import torch
from expelliarmus import Wizard
from PIL import Image

from datamodules.events.dat import decode, open_records, read_events, read_header
from datamodules.detection.base import collate_detection
from datamodules.events.gen1 import GEN1DataModule, filter_boxes, index_split, iter_dat_frames, load_boxes
from tests.event_formats import random_events, write_dat, write_gen1_boxes


def _recording(folder, name="rec_a", n=3000, seed=0):
    ev = random_events(np.random.default_rng(seed), n, 304, 240, 2_000_000)
    ev["x"][:2], ev["y"][:2] = [0, 303], [0, 239]  # the extreme coordinates
    write_dat(folder / f"{name}_td.dat", ev)
    rows = [(400_000, 10, 10, 50, 40, 0, 0.9, 1),       # too early: skipped
            (1_000_000, 20, 30, 40, 30, 0, 1.0, 2),     # kept
            (1_000_000, 100, 100, 8, 40, 1, 1.0, 3),    # side 8 < 10: dropped
            (1_500_000, 290, 200, 30, 60, 1, 1.0, 4),   # clipped to 14 x 40: kept
            (1_500_000, 5, 5, 20, 20, 0, 1.0, 5)]       # diagonal 28.3 < 30: dropped
    write_gen1_boxes(folder / f"{name}_bbox.npy", rows)
    return ev


def test_dat_header_and_events_read_back_exactly(tmp_path):
    ev = _recording(tmp_path)
    header = read_header(tmp_path / "rec_a_td.dat")
    assert (header.width, header.height, header.event_type, header.event_size) == (304, 240, 0, 8)
    events = read_events(tmp_path / "rec_a_td.dat")
    for key in "xytp":
        np.testing.assert_array_equal(events[key], ev[key])
    reference = Wizard(encoding="dat").read(tmp_path / "rec_a_td.dat")
    for key in "xytp":
        np.testing.assert_array_equal(events[key], reference[key])


def test_decode_is_independent_of_the_block_size(tmp_path):
    ev = _recording(tmp_path)
    _, records = open_records(tmp_path / "rec_a_td.dat")
    whole = decode(records)
    for chunk in (1, 7, 1000):
        np.testing.assert_array_equal(decode(records, chunk=chunk), whole)
    np.testing.assert_array_equal(whole["y"], ev["y"])


def test_read_events_window_is_half_open(tmp_path):
    ev = _recording(tmp_path)
    lo, hi = int(ev["t"][100]), int(ev["t"][2000])
    window = read_events(tmp_path / "rec_a_td.dat", lo, hi)
    inside = (ev["t"] >= lo) & (ev["t"] < hi)
    np.testing.assert_array_equal(window["t"], ev["t"][inside])
    np.testing.assert_array_equal(window["x"], ev["x"][inside])


def test_truncated_record_fails_naming_the_file(tmp_path):
    _recording(tmp_path)
    path = tmp_path / "rec_a_td.dat"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="rec_a_td.dat.*multiple of 8"):
        read_events(path)


def test_boxes_read_field_by_field_and_standard_filter(tmp_path):
    _recording(tmp_path)
    table = load_boxes(tmp_path / "rec_a_bbox.npy")
    raw = np.load(tmp_path / "rec_a_bbox.npy")
    np.testing.assert_array_equal(table[:, 0], raw["ts"])
    for column, key in enumerate(("x", "y", "w", "h", "class_id"), start=1):
        np.testing.assert_array_equal(table[:, column], raw[key].astype(np.float64))
    kept = filter_boxes(table)
    np.testing.assert_array_equal(kept, [[1_000_000, 20, 30, 40, 30, 0], [1_500_000, 290, 200, 14, 40, 1]])


def test_samples_frames_and_batch_contract(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / split).mkdir()
    ev = _recording(tmp_path / "train")
    samples = index_split(tmp_path / "train")
    assert [s.t for s in samples] == [1_000_000, 1_500_000]
    data = GEN1DataModule(str(tmp_path), num_steps=4, window_us=25_000, image_size=152, clip_count=None)
    dataset = data.make_dataset("train", None)
    item = dataset[1]
    assert item["image"].shape == (4, 2, 152, 152)
    in_window = (ev["t"] >= 1_400_000) & (ev["t"] < 1_500_000)
    # area resizing by 1/2 keeps the mean: the count total is a quarter of the events
    assert item["image"].sum().item() == pytest.approx(in_window.sum() / 4)
    assert not item["image"][..., 120:, :].any()  # 240 * 0.5 = 120 rows, then padding
    torch.testing.assert_close(item["target"]["boxes"], torch.tensor([[145.0, 100.0, 152.0, 120.0]]))
    assert item["target"]["labels"].tolist() == [1]
    batch = collate_detection([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 4, 2, 152, 152)


def test_missing_root_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)train.*_td\.dat with <recording>_bbox\.npy"):
        GEN1DataModule(str(tmp_path / "nowhere"))
    for split in ("train", "val", "test"):
        (tmp_path / split).mkdir()
    write_dat(tmp_path / "train" / "x_td.dat", random_events(np.random.default_rng(0), 5, 304, 240, 100))
    with pytest.raises(FileNotFoundError, match="x_bbox.npy"):
        index_split(tmp_path / "train")


def test_recording_frames_for_streaming_cover_every_event_once(tmp_path):
    ev = _recording(tmp_path, n=500)
    frames = list(iter_dat_frames(tmp_path / "rec_a_td.dat", frame_us=300_000, image_size=304, clip_count=None))
    start = int(ev["t"].min())
    assert len(frames) == -(-(int(ev["t"].max()) + 1 - start) // 300_000)
    for k, frame in enumerate(frames):
        assert frame.shape == (2, 304, 304)
        inside = (ev["t"] >= start + k * 300_000) & (ev["t"] < start + (k + 1) * 300_000)
        for p in (0, 1):
            expected = torch.zeros(304, 304)
            for x, y in zip(ev["x"][inside & (ev["p"] == p)], ev["y"][inside & (ev["p"] == p)]):
                expected[y, x] += 1
            torch.testing.assert_close(frame[p], expected)


def test_a_file_without_the_header_is_refused_unless_said_headerless(tmp_path):
    ev = _recording(tmp_path)
    dat = (tmp_path / "rec_a_td.dat").read_bytes()
    body = dat[-8 * len(ev["t"]):]  # the records alone: a legacy headerless file
    (tmp_path / "legacy.dat").write_bytes(body)
    with pytest.raises(ValueError, match=r"legacy.dat: not a Prophesee .dat event file .*--headerless"):
        read_events(tmp_path / "legacy.dat")
    np.testing.assert_array_equal(read_events(tmp_path / "legacy.dat", headerless=True)["t"], ev["t"])
    noise = np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    (tmp_path / "noise.dat").write_bytes(noise)
    png = tmp_path / "picture.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    png.write_bytes(png.read_bytes().ljust(-(-png.stat().st_size // 8) * 8, b"\0"))  # padded to records
    for path in (tmp_path / "noise.dat", png):
        with pytest.raises(ValueError, match=f"{path.name}: not a Prophesee .dat event file"):
            iter_dat_frames(path)


@pytest.mark.parametrize("header, message", [
    (b"% Width 30a\n% Height 240\n\x00\x08", r"malformed header line '% Width 30a': expected '% Width <integer>'"),
    (b"% Height\n\x00\x08", r"malformed header line '% Height': expected '% Height <integer>'"),
    (b"% Width 304\n\x0c\x08", r"event type 12 of 8 bytes, expected type 0 of 8 bytes \(CD events\)"),
])
def test_a_malformed_header_or_another_event_type_is_named_with_the_file(tmp_path, header, message):
    path = tmp_path / "rec_td.dat"
    path.write_bytes(header + bytes(16))
    with pytest.raises(ValueError, match=f"{path.name}: {message}"):
        read_header(path)
