"""The ensemble the retraining already paid for: greedy ensemble selection with replacement (Caruana et
al., 2004) over every retrained run, on PublicTest (validation) ten-crop logits only, written to
``ensemble.yaml``; the plain average of all runs beside it as a baseline. The test split chooses
nothing here: both are scored once, by :mod:`fer_tune.reporting.scoring`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fer_tune.data.fer_data import FerData
from fer_tune.search_folder import SearchFolder
from fer_tune.training.device import pick_device
from fer_tune.training.ensemble_model import ENSEMBLE_KIND
from fer_tune.training.evaluate import evaluate_model, model_from_checkpoint
from fer_tune.yaml_files import write_yaml

log = logging.getLogger(__name__)

SELECTION = "greedy ensemble selection with replacement (Caruana et al., 2004) on PublicTest ten-crop accuracy"
RUN_KEY = ["winner", "seed", "stage"]


@dataclass(frozen=True)
class Combination:
    """Weights over retrained runs (keyed by winner, seed, stage) and their validation accuracy."""

    name: str  # "ensemble" (greedy selection) or "average" (every run, equal weights)
    weights: dict[tuple[int, int, str], float]
    val_acc: float
    best_member_val_acc: float  # the best single run's, computed alike (greedy selection starts from it)


def _accuracy_and_nll(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    log_p = torch.log_softmax(torch.from_numpy(logits).double(), 1)
    nll = float(-log_p[torch.arange(len(labels)), torch.from_numpy(labels).long()].mean())
    return float((logits.argmax(1) == labels).mean()), nll


def greedy_selection(logits: list[np.ndarray], labels: np.ndarray, rounds: int | None = None) -> list[int]:
    """How many times each member is picked: start from the best single member, then add, with
    replacement, the member whose addition gives the best accuracy of the mean logits (ties: the lower
    log-loss, then the first member), for ``rounds`` picks (default twice the members); the best prefix
    wins (ties: the shorter one)."""
    rounds = rounds or 2 * len(logits)
    key = lambda mean: (lambda a, n: (a, -n))(*_accuracy_and_nll(mean, labels))  # noqa: E731
    first = max(range(len(logits)), key=lambda i: (key(logits[i]), -i))
    counts = [0] * len(logits)
    counts[first], total = 1, logits[first].astype(np.float64)
    best, best_counts = key(total), list(counts)
    for picks in range(2, rounds + 1):
        scores = [key((total + member) / picks) for member in logits]
        pick = max(range(len(logits)), key=lambda i: (scores[i], -i))
        counts[pick] += 1
        total = total + logits[pick]
        if scores[pick] > best:
            best, best_counts = scores[pick], list(counts)
    return best_counts


def validation_logits(runs: pd.DataFrame, data: FerData, device: str | None = None) -> list[np.ndarray]:
    """Each run's ten-crop logits on the validation split (PublicTest)."""
    dev = pick_device(device)
    split = data.roles["val"]
    out = []
    for run in runs.itertuples():
        model, config = model_from_checkpoint(run.checkpoint, dev)
        out.append(evaluate_model(model, config, data, split, dev).logits)
    return out


def choose_combinations(
    runs: pd.DataFrame, data: FerData, protocol: str, device: str | None = None
) -> tuple[list[Combination], str | None]:
    """The greedy ensemble and the plain average of every retrained run, chosen on validation; none,
    with the reason, under ``trainval`` (PublicTest is training data there) or with one run."""
    if protocol != "paper":
        return [], (
            f"no ensemble: under --protocol {protocol} PublicTest is training data, so nothing can be chosen on "
            "it; retrain with --protocol paper to get one"
        )
    if len(runs) < 2:
        return [], "no ensemble: one retrained run, nothing to combine"
    logits = validation_logits(runs, data, device)
    _, labels = data.split(data.roles["val"])
    keys = [tuple(k) for k in runs[RUN_KEY].itertuples(index=False)]
    counts = greedy_selection(logits, labels)
    chosen = {k: c / sum(counts) for k, c in zip(keys, counts) if c}
    mean = sum(logits[i] * c for i, c in enumerate(counts)) / sum(counts)
    average = sum(logits) / len(logits)
    single = max(_accuracy_and_nll(member, labels)[0] for member in logits)
    return [
        Combination("ensemble", chosen, _accuracy_and_nll(mean, labels)[0], single),
        Combination("average", {k: 1 / len(keys) for k in keys}, _accuracy_and_nll(average, labels)[0], single),
    ], None


def write_ensemble(folder: Path, runs: pd.DataFrame, combination: Combination) -> Path:
    """``ensemble.yaml``: the chosen members (checkpoints relative to the folder) and their weights, which
    ``evaluate``, ``predict`` and ``export`` read."""
    by_key = {tuple(k): c for k, c in zip(runs[RUN_KEY].itertuples(index=False), runs.checkpoint)}
    members = [
        {
            "checkpoint": str(Path(by_key[key]).resolve().relative_to(folder.resolve())),
            "winner": int(key[0]),
            "seed": int(key[1]),
            "stage": key[2],
            "weight": round(weight, 6),
        }
        for key, weight in combination.weights.items()
    ]
    return write_yaml(
        folder / SearchFolder.ENSEMBLE,
        {
            "kind": ENSEMBLE_KIND,
            "chosen_by": SELECTION,
            "networks": len(members),
            "val_acc": combination.val_acc,
            "best_member_val_acc": combination.best_member_val_acc,
            "members": members,
        },
        header="# written by fer-tune's retraining: an ensemble chosen on PublicTest only; "
        "launch.py evaluate / predict / export take this file\n",
    )


def ensemble_lines(ensembles: pd.DataFrame | str | None, test_split: str) -> list[str]:
    """report.md's section: the ensemble and the average of every run, beside (never instead of) the
    headline single model; or why there is none."""
    from fer_tune.markdown import markdown_table
    from fer_tune.reporting.headline import num, pct

    if ensembles is None:
        return []
    lines = [f"## Ensembles (chosen on PublicTest, scored once on {test_split})", ""]
    if isinstance(ensembles, str):
        return lines + [ensembles[0].upper() + ensembles[1:] + ".", ""]
    names = {"ensemble": "ensemble of {n} networks (greedy selection)", "average": "average of all {n} runs"}
    rows = [
        {
            "": names[row.combination].format(n=row.networks),
            "PublicTest acc. (chose it)": pct(row.val_acc),
            "best member on PublicTest": pct(row.best_member_val_acc),
            f"{test_split} acc. (ten-crop)": pct(row.accuracy),
            "95% CI": f"{pct(row.accuracy_ci_low)} - {pct(row.accuracy_ci_high)}",
            "F1 of macro P and R": num(row.f1_of_macro_pr),
            "macro F1 (mean of per-class F1)": num(row.macro_f1),
            "leakage-free acc.": pct(row.leak_free_accuracy),
        }
        for row in ensembles.itertuples()
    ]
    return lines + [
        f"Members and weights: {SELECTION}, over every retrained run (`ensemble.yaml`; `launch.py evaluate`, "
        "`predict` and `export` take it). Reported beside the headline single model, never instead of it.",
        "",
        markdown_table(rows),
        "",
    ]
