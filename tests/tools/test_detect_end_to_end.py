"""End to end, as a user's VOC copy would go: train with the quickstart config pointed at a VOC
devkit folder, then evaluate and predict with the tools from the checkpoint alone, each as its own process."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.formats import write_voc_fixture

REPO = Path(__file__).resolve().parents[2]
KEYS = {"map", "map_50", "map_75", "per_class", "map_50_per_step"}


def run_tool(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # tiny ops: threads only cost
    done = subprocess.run([sys.executable, f"tools/{script}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_train_eval_predict_on_a_voc_folder(tmp_path):
    root = tmp_path / "VOCdevkit"
    fix = write_voc_fixture(root, sets={"trainval": 8, "test": 4})
    run = ["--config", "configs/quickstart_detect.yaml",
           "--data", "datamodules.detection.voc.VOCDetectionDataModule", "--data.root", str(root),
           "--data.train_sets", '[["2007", "trainval"]]', "--data.val_sets", '[["2007", "test"]]',
           "--data.image_size", "64", "--data.batch_size", "4", "--data.num_workers", "0",
           "--model.init_args.anchors", "null",
           "--model.init_args.backbone_kwargs", '{"width": 0.125}',  # eager neurons: no compile time
           "--model.init_args.neck_kwargs", '{"output_neuron": "ltc_readout"}',
           "--model.init_args.twin_epochs", "0"]  # spiking from the first batch
    run_tool("train.py", *run, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", str(tmp_path / "runs"), "--checkpoint.dirpath", str(tmp_path / "ckpt"))
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()

    out = tmp_path / "eval"
    report = run_tool("eval.py", "--ckpt", str(ckpt), "--split", "test", "--json", str(out / "m.json"),
                      "--out", str(out), "--trainer.enable_progress_bar", "false")
    results = json.loads((out / "m.json").read_text())
    assert KEYS <= set(results)
    assert len(results["per_class"]) == 20 and "car" in results["per_class"]
    assert len(results["map_50_per_step"]) == 2  # the quickstart's T
    assert all(-1.0 <= results[k] <= 1.0 for k in ("map", "map_50", "map_75"))
    assert "mAP@0.5 per time step" in report and "energy per sample" in report
    assert (out / "map_vs_step.png").stat().st_size > 0
    assert len(list(out.glob("test_*.png"))) == 4
    assert isinstance(json.loads((out / "coco_results_test.json").read_text()), list)

    pictures = tmp_path / "pred"
    images = root / "VOC2007" / "JPEGImages"
    (images / "broken.jpg").write_bytes(b"not an image")  # skipped with a warning
    whole = (images / f"{fix['sets']['test'][0]}.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(whole[:len(whole) // 2])  # its header reads, its data is cut: skipped too
    run_tool("predict.py", "--ckpt", str(ckpt), "--input", str(images), "--out",
             str(pictures), "--trainer.enable_progress_bar", "false")
    drawn = {p.name for p in pictures.glob("*.png")}
    assert len(drawn) == 12 and not {"broken.png", "cut.png"} & drawn
    detections = json.loads((pictures / "detections.json").read_text())
    assert {"image_id", "category_id", "bbox", "score", "file_name"} <= set(detections[0])
