"""Side-by-side timings, one run, one machine: batched augmentation vs the per-image torchvision
pipeline of the public VGGNet code, and a full-size FER2013-format CSV loaded cold and cached.

    python bench/bench_data.py                 # full-size demo CSV (35,887 rows) written to a temp dir
    python bench/bench_data.py --csv data/fer2013.csv   # time the real file instead

Prints images per second for each pipeline and their ratio; the figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from fer_tune.data.demo import DemoSpec, write_demo_csv
from fer_tune.data.fer2013 import cache_path_for, load_fer
from fer_tune.training.augment import AugmentConfig, BatchAugmenter


def per_image_baseline() -> transforms.Compose:
    """The VGGNet recipe's training transforms as the public VGGNet code writes them (PIL, per image)."""
    return transforms.Compose(
        [
            transforms.RandomApply([transforms.RandomResizedCrop(48, scale=(0.8, 1.2))], p=0.5),
            transforms.RandomApply([transforms.RandomAffine(0, translate=(0.2, 0.2))], p=0.5),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.RandomRotation(10)], p=0.5),
            transforms.TenCrop(40),
            transforms.Lambda(lambda crops: torch.stack([transforms.ToTensor()(crop) for crop in crops])),
            transforms.Lambda(lambda tensors: torch.stack([transforms.RandomErasing()(t) for t in tensors])),
        ]
    )


class PerImageDataset(torch.utils.data.Dataset):
    """The per-image pipeline over uint8 images: the ten crops of each, with its label when given."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None):
        self.images, self.labels = images, labels
        self.transform = per_image_baseline()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        crops = self.transform(Image.fromarray(self.images[i]))
        return crops if self.labels is None else (crops, int(self.labels[i]))


def time_batched(images: np.ndarray, batch: int, device: str) -> float:
    """Images per second through :class:`BatchAugmenter` (uint8 tensor already on the device)."""
    x = torch.from_numpy(images).to(device)
    labels = torch.zeros(len(x), dtype=torch.long, device=device)
    aug = BatchAugmenter(AugmentConfig("vgg"), torch.Generator(device).manual_seed(0))
    aug.train(x[:batch], labels[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        out, _ = aug.train(x[i : i + batch], labels[i : i + batch])
    if device == "cuda":
        torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - start)


def time_per_image(images: np.ndarray, batch: int, workers: int) -> float:
    """Images per second through the per-image pipeline in a DataLoader (``workers`` processes)."""
    loader = torch.utils.data.DataLoader(PerImageDataset(images), batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(images) / (time.perf_counter() - start)


def time_loading(csv: Path) -> tuple[float, float]:
    """(cold parse seconds, cached load seconds) for ``csv``."""
    cache_path_for(csv).unlink(missing_ok=True)
    start = time.perf_counter()
    load_fer(csv)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    load_fer(csv)
    return cold, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, help="a FER2013-format CSV to time (default: a full-size demo CSV)")
    p.add_argument("--images", type=int, default=2048, help="images through each augmentation pipeline")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    print(
        f"machine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device {args.device}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        csv = args.csv or write_demo_csv(Path(tmp) / "fer2013.csv", DemoSpec(4101, 513, 513, seed=0))
        cold, cached = time_loading(csv)
        rows = len(load_fer(csv).labels)
        print(f"load {csv.name} ({rows} rows): cold parse {cold:.2f} s, cached {cached:.3f} s ({cold / cached:.0f}x)")
        images = load_fer(csv).role("train")[0][: args.images].copy()

    batched = time_batched(images, args.batch, args.device)
    single = time_per_image(images, args.batch, workers=0)
    loader2 = time_per_image(images, args.batch, workers=2)
    print(f"augmentation (VGG recipe, ten-crop + erasing), {len(images)} images, batch {args.batch}:")
    print(f"  batched tensor ops ({args.device}):          {batched:9.0f} images/s")
    print(f"  per-image torchvision, in process:    {single:9.0f} images/s   ratio {batched / single:.1f}x")
    print(f"  per-image torchvision, 2 workers:     {loader2:9.0f} images/s   ratio {batched / loader2:.1f}x")


if __name__ == "__main__":
    main()
