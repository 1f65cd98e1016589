"""The one way through: search -> analysis -> retrain -> score -> report.

``launch.py --search NAME`` runs all four; ``launch.py --retrain NAME`` starts at the retraining of
a finished search. Each Tune step starts Ray only once its inputs are checked (and the base model,
if one must be trained first, is trained), so a mistake never waits for Ray. Only the scoring step
reads the test split (PrivateTest); everything before it sees Training and PublicTest only.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from fer_tune.data.fer_data import FerData
from fer_tune.files import ctrl_c_held, write_csv_atomic
from fer_tune.reporting.analysis import analyze
from fer_tune.reporting.ensemble import choose_combinations, write_ensemble
from fer_tune.reporting.headline import headline_winner
from fer_tune.reporting.report import write_report
from fer_tune.reporting.scoring import ScoredRuns, score_combination, score_runs, write_scores
from fer_tune.run_folder import folder_lock, require_search_folder
from fer_tune.search.retrain import run_retrain
from fer_tune.search.retrain_plan import RetrainOptions
from fer_tune.search.run import SearchOptions, run_search
from fer_tune.search_folder import SearchFolder

log = logging.getLogger(__name__)


def search_to_report(space_name: str, data: FerData, search: SearchOptions, retrain: RetrainOptions | None) -> Path:
    """Search, then (unless ``retrain`` is None) retrain, score and report; returns the search folder.
    The Ray the search starts (after every check, and after a base trained first) serves the retraining too."""
    import ray

    started_here = not ray.is_initialized()
    try:
        outcome = run_search(space_name, data, replace(search, keep_ray=retrain is not None))
        analyze(outcome.folder)
        if retrain is not None:
            retrain_and_report(outcome.folder, data, retrain)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    return outcome.folder


def retrain_and_report(folder: Path, data: FerData, opts: RetrainOptions) -> Path:
    """Retrain (training and validation splits only), then score on the test split, then write the report;
    the search folder is locked for it (a second retraining or analysis there is refused)."""
    with folder_lock(require_search_folder(folder), "retraining"):
        return _retrain_and_report(folder, data, opts)


def _retrain_and_report(folder: Path, data: FerData, opts: RetrainOptions) -> Path:
    runs, winners = run_retrain(folder, data, opts)
    write_csv_atomic(runs, folder / SearchFolder.RETRAIN_RUNS)
    log.info(f"scoring {len(runs)} retrained runs once on the test split")
    scored = score_runs(runs, data, opts.device)
    write_scores(scored, folder)
    ensembles = ensemble_scores(folder, runs, data, scored, opts)
    with ctrl_c_held():  # winners.csv, the figures and report.md: all or none
        report = write_report(
            folder,
            winners[0].config["model"],
            runs,
            scored,
            {w.rank: w.config for w in winners},
            winners[0].config.get("base_checkpoint"),
            ensembles,
        )
    winners_table = pd.read_csv(folder / SearchFolder.WINNERS)
    best = winners_table[winners_table.winner == headline_winner(winners_table)].iloc[0]
    log.info(
        f"{scored.test_split}: headline winner {int(best.winner)} (chosen on validation: best mean PublicTest "
        f"accuracy in retraining, {best.val_acc_mean:.4f}) accuracy {best.accuracy_mean:.4f} "
        f"+- {best.accuracy_std:.4f} (95% CI {best.accuracy_ci_low:.4f}-{best.accuracy_ci_high:.4f}), "
        f"F1 of macro P and R {best.f1_of_macro_pr_mean:.4f}, macro F1 {best.macro_f1_mean:.4f}"
    )
    log.info(f"report: {report}")
    return report


def ensemble_scores(
    folder: Path, runs: pd.DataFrame, data: FerData, scored: ScoredRuns, opts: RetrainOptions
) -> pd.DataFrame | str:
    """The ensemble chosen on PublicTest (written to ``ensemble.yaml``) and the plain average of every run,
    each scored once on the test split (``ensembles.csv``); or the reason there is none."""
    combinations, why_not = choose_combinations(runs, data, opts.protocol, opts.device)
    SearchFolder(folder).remove_stale(SearchFolder.ENSEMBLE, SearchFolder.ENSEMBLES)
    if why_not:
        log.info(why_not)
        return why_not
    written = write_ensemble(folder, runs, combinations[0])
    table = pd.DataFrame(
        [
            {
                "combination": c.name,
                "networks": len(c.weights),
                "val_acc": c.val_acc,
                "best_member_val_acc": c.best_member_val_acc,
                **score_combination(scored, c.weights),
            }
            for c in combinations
        ]
    )
    write_csv_atomic(table, folder / SearchFolder.ENSEMBLES)
    chosen = table.iloc[0]
    log.info(
        f"ensemble of {chosen.networks} networks (chosen on PublicTest: {chosen.val_acc:.4f}, best member "
        f"{chosen.best_member_val_acc:.4f}): {scored.test_split} accuracy {chosen.accuracy:.4f}; {written}"
    )
    return table
