"""The figures a headline stands beside: the paper's, the rule that picks the headline winner (on
validation only), and how a report writes a percentage or a score."""

from __future__ import annotations

import pandas as pd

# FER2013 PrivateTest as Santoso & Kusuma report it (accuracy, macro P, R, F1; VGGNet: Khaireddin & Chen)
PAPER_RESULTS: dict[str, tuple[str, float, float | None, float | None, float | None]] = {
    "vgg_spinal": ("VGGSpinalNet", 0.7445, 0.740, 0.727, 0.733),
    "vgg_progressive_spinal": ("VGGProgressiveSpinalNet", 0.7439, 0.740, 0.725, 0.732),
    "effnetv2s_spinal": ("EfficientNetV2-S-SpinalNet", 0.7211, 0.720, 0.704, 0.712),
    "effnetv2s": ("EfficientNetV2-S", 0.7183, None, None, None),
    "vit_l32_spinal": ("ViT-L/32(21k)-SpinalNet", 0.7160, 0.718, 0.702, 0.710),
    "vit_l32": ("ViT-L/32(21k)", 0.7127, None, None, None),
    "vgg": ("VGGNet (Khaireddin & Chen; PublicTest, selected on PrivateTest)", 0.7328, None, None, None),
}


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals (blank for a missing value)."""
    return "" if value is None or pd.isna(value) else f"{value * 100:.2f}%"


def num(value: float | None) -> str:
    """A score with three decimals (blank for a missing value)."""
    return "" if value is None or pd.isna(value) else f"{value:.3f}"


HEADLINE_RULE = (
    "the winner with the best mean PublicTest (validation) accuracy over its retraining seeds "
    "(ties: the better search rank); PrivateTest chooses nothing"
)


def headline_winner(winners: pd.DataFrame) -> int:
    """The winner whose test figures stand beside the paper's, chosen on validation only (HEADLINE_RULE)."""
    if "headline" in winners and winners.headline.any():
        return int(winners[winners.headline.astype(bool)].winner.iloc[0])
    ranked = winners.sort_values(["val_acc_mean", "winner"], ascending=[False, True], kind="stable")
    return int(ranked.winner.iloc[0])
