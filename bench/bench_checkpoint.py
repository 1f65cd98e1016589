"""Bytes a search trial writes per checkpoint, before and after lean checkpoints, per model family.

    python bench/bench_checkpoint.py            # all families (ViT-L/32 needs ~8 GB of RAM, ~1 min)
    python bench/bench_checkpoint.py --no-vit

"Before" is what a trial wrote every epoch until lean checkpoints: the whole model, the optimizer and
the scheduler. "After" is one write now: :meth:`fer_tune.training.engine.Trainer.state_dict` (the frozen base
tensors left out) and the best epoch's weights (``best.pt``: the trainable tensors, no optimizer).
Each model takes one optimizer step (Ranger and Ranger21 keep two or more tensors per weight) on two
images so that the optimizer state exists; bytes are summed over the tensors (what torch.save writes,
less a few KB of structure). CPU is fine: bytes do not depend on the device.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch

from fer_tune.models import create_model
from fer_tune.training.config import TrainConfig
from fer_tune.training.engine import Trainer

# (model, its base, freeze, width): the families of the paper, frozen where the paper transfers
CASES = [
    ("vgg", None, False, 1.0),
    ("vgg_spinal", "vgg", True, 1.0),
    ("vgg_spinal", "vgg", False, 1.0),
    ("effnetv2s", None, False, 1.0),
    ("effnetv2s_spinal", "effnetv2s", True, 1.0),
    ("vit_l32_spinal", "vit_l32", True, 1.0),
    ("vit_l32_spinal", "vit_l32", False, 1.0),
]


def tensor_bytes(value) -> int:
    """Bytes of every tensor inside ``value`` (nested dicts / lists)."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def measure(
    model: str, base: str | None, freeze: bool, width: float, optimizer: str, device: str | None = None
) -> tuple[int, int]:
    """(bytes before, bytes after) of one trial checkpoint."""
    extra = {"pretrained_path": "from_scratch"} if model.startswith("vit") else {}
    base_state = (
        create_model(
            base, width=width, **({"pretrained_path": "from_scratch"} if base and base.startswith("vit") else {})
        ).state_dict()
        if base
        else None
    )
    config = TrainConfig(
        model=model,
        width=width,
        freeze=freeze,
        optimizer=optimizer,
        batch_size=2,
        epochs=1,
        scheduler="none" if optimizer == "ranger21" else "cosine",
        **extra,
    )
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    labels = np.array([0, 1])
    trainer = Trainer(config, (images, labels), (images, labels), base_state=base_state, device=device)
    trainer.train_one_epoch()
    before = {**trainer.state_dict(), "model": trainer.model.state_dict()}
    # after: the resumption state and the best epoch's trainable weights (best.pt), both lean
    return tensor_bytes(before), tensor_bytes(trainer.state_dict()) + tensor_bytes(trainer.trainable_weights())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-vit", action="store_true", help="skip ViT-L/32 (300 M parameters)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# bytes per trial checkpoint ({platform.node()}, torch {torch.__version__})\n")
    print("| model | base frozen | optimizer | before (MB) | after (MB) | ratio |")
    print("|---|---|---|---|---|---|")
    for model, base, freeze, width in CASES:
        if args.no_vit and model.startswith("vit"):
            continue
        for optimizer in ("ranger", "ranger21"):
            before, after = measure(model, base, freeze, width, optimizer)
            print(
                f"| {model} | {'yes' if freeze else 'no'} | {optimizer} | {before / 1e6:.1f} | {after / 1e6:.1f} | "
                f"{before / after:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
