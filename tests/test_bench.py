"""The device check (bench/gpu_check.py) runs end to end in its CPU mode, so it works the day a GPU appears."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
def test_gpu_check_tiny_writes_every_table(ray_local, tmp_path):  # the suite's Ray: no start-up of its own
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["tiny"] and report["card"] and report["device"] == "cpu"
    assert {r["model"] for r in report["throughput"]} == {"vgg", "vgg_spinal"}
    assert all(r["images_per_s"] > 0 and r["epoch_s"] > 0 for r in report["throughput"])
    assert report["augmentation"]["ratio"] > 0 and report["augmentation"]["dataloader_workers"] >= 1
    assert [r["trials"] for r in report["packing"]] == [1, 2] and report["packing"][0]["vs_one_trial"] == 1.0
    assert report["checkpoints"][0]["after_mb"] < report["checkpoints"][0]["before_mb"]  # the frozen base left out
    text = (tmp_path / "gpu_check.md").read_text()
    assert text.startswith(f"# fer-tune device check: {report['card']}")
    assert "## VGG trials sharing one device through Ray" in text and "| 2 |" in text
