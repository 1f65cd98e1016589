"""From a finished search to a result: retrain the winners, score them once on PrivateTest, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fer_tune.data import FerData
from fer_tune.files import write_csv_atomic
import pandas as pd

from fer_tune.report import headline_winner, write_report
from fer_tune.retrain import run_retrain
from fer_tune.scoring import score_runs, write_scores


@dataclass
class FinishOptions:
    """How to retrain: top-k configurations x seeds, under one protocol."""

    top_k: int = 3
    seeds: int = 3
    protocol: str = "paper"
    epochs: int | None = None
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    device: str | None = None
    pretrained: str | None = None  # ViT: overrides the pretrained folder the search recorded


def retrain_and_report(folder: Path, data: FerData, opts: FinishOptions, log: Callable[[str], None] = print) -> Path:
    """Retrain (training and validation splits only), then score on the test split, then write the report."""
    runs, winners = run_retrain(folder, data, top_k=opts.top_k, seeds=opts.seeds, protocol=opts.protocol,
                                epochs=opts.epochs, gpus_per_trial=opts.gpus_per_trial,
                                cpus_per_trial=opts.cpus_per_trial, pretrained=opts.pretrained, log=log)
    write_csv_atomic(runs, folder / "retrain_runs.csv")
    log(f"scoring {len(runs)} retrained runs once on the test split")
    scored = score_runs(runs, data, opts.device)
    write_scores(scored, folder)
    base = winners[0].config.get("base_checkpoint")
    report = write_report(folder, winners[0].config["model"], runs, scored,
                          {w.rank: w.config for w in winners}, base)
    winners_table = pd.read_csv(folder / "winners.csv")
    best = winners_table[winners_table.winner == headline_winner(winners_table)].iloc[0]
    log(f"{scored.test_split}: headline winner {int(best.winner)} (chosen on validation: best mean PublicTest "
        f"accuracy in retraining, {best.val_acc_mean:.4f}) accuracy {best.accuracy_mean:.4f} "
        f"+- {best.accuracy_std:.4f} (95% CI {best.accuracy_ci_low:.4f}-{best.accuracy_ci_high:.4f}), "
        f"F1 of macro P and R {best.f1_of_macro_pr_mean:.4f}, macro F1 {best.macro_f1_mean:.4f}")
    log(f"report: {report}")
    return report
