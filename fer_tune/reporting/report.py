"""The report of a finished search (``report.md``, ``winners.csv``, PNGs) and the leaderboard."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fer_tune.data.describe import data_identity, figure_note
from fer_tune.files import write_csv_atomic, write_text_atomic
from fer_tune.manifest import read_manifest
from fer_tune.markdown import markdown_table
from fer_tune.reporting.ensemble import ensemble_lines
from fer_tune.reporting.headline import HEADLINE_RULE, PAPER_RESULTS, headline_winner, num, pct
from fer_tune.reporting.plots import plot_confusion, plot_curves, plot_search
from fer_tune.reporting.scoring import ScoredRuns
from fer_tune.search_folder import SearchFolder, read_history, trial_label

SETTINGS = ["optimizer", "scheduler", "lr", "weight_decay", "batch_size", "freeze", "epochs"]


def write_report(
    folder: Path,
    model: str,
    runs: pd.DataFrame,
    scored: ScoredRuns,
    winners_config: dict[int, dict],
    base_source: str | None,
    ensembles: pd.DataFrame | str | None = None,
) -> Path:
    """Write report.md, winners.csv and the PNGs into ``folder``; returns the report's path (``ensembles``:
    the ensemble's scores, or why there is none)."""
    trials = pd.read_csv(folder / SearchFolder.TRIALS)
    if "stage" not in runs:
        runs = runs.assign(stage="main")
    finetuned = _finetune_lines(scored.winners, runs, scored.test_split)
    runs = runs[runs.stage == "main"]
    settings = SETTINGS + (["activation"] if model.startswith("effnet") else [])
    summary = winners_summary(runs, scored, winners_config, settings)
    write_csv_atomic(summary, folder / SearchFolder.WINNERS)
    manifest = read_manifest(folder)
    smoke = bool(manifest and manifest.smoke)
    _draw_figures(folder, model, summary, runs, trials, scored, figure_note(smoke))
    identity, comparable = data_identity(manifest.data if manifest else None, demo=smoke)
    lines = [
        *_protocol_lines(folder, model, runs.protocol.iloc[0], scored, base_source, smoke),
        identity,
        "",
        *_winners_lines(summary, settings, trials),
        *_headline_lines(summary, scored.test_split, model, comparable),
        *_every_winner_lines(summary, scored.test_split),
        *ensemble_lines(ensembles, scored.test_split),
        *_transfer_lines(trials, summary),
        *finetuned,
        *_compute_lines(trials, runs),
        "## Pictures",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![search](search.png)",
        "",
        "Files: `winners.csv`, `scores.csv` (per run), `predictions.csv` (every test image of every run), "
        "`winners/*.pt` (the runs' checkpoints), `trials.csv`.",
    ]
    return write_text_atomic(folder / SearchFolder.REPORT, "\n".join(lines) + "\n")


def winners_summary(
    runs: pd.DataFrame, scored: ScoredRuns, winners_config: dict[int, dict], settings: list[str]
) -> pd.DataFrame:
    """One row per winner (main stage): its test scores, its retraining's mean validation accuracy,
    its settings, and which one is the headline (chosen on validation only)."""
    summary = scored.winners[scored.winners.stage == "main"].merge(
        runs.groupby("winner")
        .agg(
            trial=("trial", "first"),
            search_score=("search_score", "first"),
            val_acc_mean=("val_acc", "mean"),
            val_acc_std=("val_acc", "std"),
        )
        .reset_index(),
        on="winner",
    )
    summary["headline"] = summary.winner == headline_winner(summary)
    for key in settings:
        summary[key] = summary.winner.map(lambda w: winners_config[w].get(key))  # noqa: B023 (used at once)
    return summary


def _draw_figures(
    folder: Path,
    model: str,
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    trials: pd.DataFrame,
    scored: ScoredRuns,
    data_note: str,
) -> None:
    """confusion_matrix.png (the headline winner), learning_curves.png (the retraining), search.png."""
    best = int(summary[summary.headline].winner.iloc[0])
    plot_confusion(
        scored.confusion_by_winner[best],
        folder / SearchFolder.CONFUSION_PNG,
        f"{model} winner {best}, {scored.test_split} (ten-crop, all seeds, row-normalised)",
        data_note,
    )
    curves, train, selected = {}, {}, {}
    for run in runs.itertuples():
        history = read_history(run.history)
        name, picked = f"winner {run.winner} seed {run.seed}", history[history.phase == "select"]
        curves[name], selected[name] = picked.val_acc.tolist(), getattr(run, "selected_epoch", None)
        if "train_acc" in picked:
            train[name] = picked.train_acc.tolist()
    title = f"{model}: retraining, PublicTest (ten-crop)"
    plot_curves(curves, folder / SearchFolder.CURVES_PNG, title, "accuracy", train, selected, data_note)
    search_curves = {}
    for row in trials.sort_values("trial").itertuples():
        kept = Path(row.history) if isinstance(getattr(row, "history", None), str) else None
        progress = kept or Path(row.trial_path) / "progress.csv"  # a search of an older fer-tune: Ray's log
        history = read_history(progress) if progress.is_file() and progress.stat().st_size > 1 else None
        search_curves[trial_label(row.trial)] = (
            history["val_acc"].tolist() if history is not None and "val_acc" in history else []
        )
    scores = trials.filter(like="best_val").iloc[:, 0].dropna() if len(trials.filter(like="best_val").columns) else []
    best = trial_label(trials.loc[scores.idxmax(), "trial"]) if len(scores) else None  # the search's best trial
    asha = trials[trials.status == "stopped by ASHA"].trial if "status" in trials else []
    stopped = {trial_label(t) for t in asha}
    plot_search(search_curves, folder / SearchFolder.SEARCH_PNG, model, stopped, best, data_note)


def _protocol_lines(
    folder: Path, model: str, protocol: str, scored: ScoredRuns, base_source: str | None, smoke: bool
) -> list[str]:
    how = (
        "train on Training, select the epoch on PublicTest"
        if protocol == "paper"
        else "select on PublicTest, then refit on Training + PublicTest for the selected epochs"
    )
    return [
        f"# {model}: search, retraining and PrivateTest scores" + (" (a smoke run: tiny budget)" if smoke else ""),
        "",
        f"Search folder `{folder}`; base weights: {base_source or 'none (trained from scratch)'}."
        + (
            " What the search learned (importances, factor tables): [analysis.md](analysis.md)."
            if (folder / SearchFolder.ANALYSIS).is_file()
            else ""
        ),
        f"Protocol: **{protocol}** ({how}); test split **{scored.test_split}** scored once per run, ten-crop "
        "unless noted.",
        f"Leakage-free {scored.test_split}: {scored.left_out} test images whose exact pixels also appear in the "
        f"training data ({'Training' if protocol == 'paper' else 'Training or PublicTest'}) left out.",
        "",
    ]


def _winners_lines(summary: pd.DataFrame, settings: list[str], trials: pd.DataFrame) -> list[str]:
    """The winners table: each winner's search trial by the name every file gives it (``t03``, its Ray id
    beside it), its scores and settings; a number column in one format (lr and weight decay: 3 significant
    digits)."""
    numbers = dict(zip(trials.trial_id.astype(str), trials.trial))
    lines = [
        "## Winners (top configurations of the search by validation score)",
        "",
    ]
    rows = [
        {
            "winner": row.winner,
            "trial": _trial_name(numbers, str(row.trial)),
            "val score in search": f"{row.search_score:.4f}",
            "mean val acc. in retraining": f"{row.val_acc_mean:.4f}",
            **{k: f"{v:.2e}" if isinstance(v, float) else v for k, v in ((k, getattr(row, k)) for k in settings)},
        }
        for row in summary.itertuples()
    ]
    return lines + [markdown_table(rows), ""]


def _trial_name(numbers: dict[str, int], trial_id: str) -> str:
    """``t03 (42d7ff2f)``: a search trial by its number in trials.csv, its Ray id beside it."""
    return f"{trial_label(numbers[trial_id])} ({trial_id})" if trial_id in numbers else trial_id


def _headline_lines(summary: pd.DataFrame, test_split: str, model: str, comparable: bool) -> list[str]:
    head = summary[summary.headline].iloc[0]
    lines = [
        f"## Headline: winner {head.winner}",
        "",
        f"Chosen as {HEADLINE_RULE}." + _within_noise(summary),
        "",
    ]
    accuracy = f"accuracy ({test_split}, ten-crop)"
    rows = [
        {
            "": f"fer-tune winner {head.winner} (mean +- std over {head.seeds} seeds)",
            accuracy: f"{pct(head.accuracy_mean)} +- {pct(head.accuracy_std)}",
            "macro precision": num(head.macro_precision_mean),
            "macro recall": num(head.macro_recall_mean),
            "F1 of macro P and R": num(head.f1_of_macro_pr_mean),
            "macro F1 (mean of per-class F1)": num(head.macro_f1_mean),
        }
    ]
    paper = PAPER_RESULTS.get(model)
    if paper and not comparable:
        return lines + [
            markdown_table(rows),
            "",
            f"The paper's {paper[0]} ({pct(paper[1])} on FER2013) is left out: these data are not FER2013.",
            "",
        ]
    if paper:
        rows.append(
            {
                "": f"paper: {paper[0]}",
                accuracy: pct(paper[1]),
                "macro precision": num(paper[2]),
                "macro recall": num(paper[3]),
                "F1 of macro P and R": num(paper[4]),
                "macro F1 (mean of per-class F1)": "",
            }
        )
    return lines + [
        markdown_table(rows),
        "",
        'The paper\'s "macro F1" equals 2PR/(P+R) of its macro precision and recall (its four F1 values match '
        "that to the third decimal), so it is compared with the column *F1 of macro P and R*; scikit-learn's "
        "macro F1 (the mean of the per-class F1 scores) is shown beside it.",
        "",
    ]


def _within_noise(summary: pd.DataFrame) -> str:
    """A warning when the headline's validation margin over the runner-up is within the seeds' spread."""
    if len(summary) < 2 or "val_acc_std" not in summary:
        return ""
    ranked = summary.sort_values("val_acc_mean", ascending=False, kind="stable")
    head, second = ranked.iloc[0], ranked.iloc[1]
    margin, spread = head.val_acc_mean - second.val_acc_mean, max(head.val_acc_std, second.val_acc_std)
    if pd.isna(spread) or margin > spread:
        return ""
    return (
        f" **Within noise**: its validation margin over winner {second.winner} ({margin * 100:.2f} points) is not "
        f"larger than the seeds' spread (std {spread * 100:.2f} points), so the two are not told apart by "
        "validation; see every winner below."
    )


def _every_winner_lines(summary: pd.DataFrame, test_split: str) -> list[str]:
    lines = [
        f"## {test_split}, every winner (mean +- std over seeds; 95% bootstrap interval of the accuracy)",
        "",
        "Shown for completeness; these figures choose nothing.",
        "",
    ]
    rows = [
        {
            "winner": f"{row.winner}{' (headline)' if row.headline else ''}",
            "seeds": row.seeds,
            "accuracy": f"{pct(row.accuracy_mean)} +- {pct(row.accuracy_std)}",
            "95% CI": f"{pct(row.accuracy_ci_low)} - {pct(row.accuracy_ci_high)}",
            "single-crop acc.": pct(row.single_crop_accuracy_mean),
            "macro precision": num(row.macro_precision_mean),
            "macro recall": num(row.macro_recall_mean),
            "F1 of macro P and R": num(row.f1_of_macro_pr_mean),
            "macro F1 (mean of per-class F1)": num(row.macro_f1_mean),
            "leakage-free acc.": pct(row.leak_free_accuracy_mean),
        }
        for row in summary.itertuples()
    ]
    return lines + [
        markdown_table(rows),
        "",
        "Compare only like with like: the figures above are for the data in this folder "
        f"(`{test_split}` of the file the search ran on; demo data is not FER2013).",
        "",
    ]


def _compute_lines(trials: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    hours = runs.wall_time_s / 3600
    return [
        "## Compute",
        "",
        f"- search: {len(trials)} trials, {trials.epochs_run.sum()} trial-epochs, "
        f"{trials.cpu_hours.sum():.4f} CPU-hours, {trials.gpu_hours.sum():.4f} GPU-hours",
        f"- retraining: {len(runs)} runs, {(hours * runs.cpus).sum():.4f} CPU-hours, "
        f"{(hours * runs.gpus).sum():.4f} GPU-hours",
        f"- early stopping (the budget's patience): {epochs_saved_by_patience(trials)} trial-epochs saved in the "
        f"search, {epochs_saved_by_patience(runs)} epochs in the retraining",
        "",
    ]


def epochs_saved_by_patience(table: pd.DataFrame) -> int:
    """Epochs a table's runs did not train because their validation score stopped improving."""
    return int(table["epochs_saved_by_patience"].sum()) if "epochs_saved_by_patience" in table else 0


def _finetune_lines(winners: pd.DataFrame, runs: pd.DataFrame, test_split: str) -> list[str]:
    """The fine-tune stage's own table (paper Table 11), apart from the main run's figures."""
    tuned = winners[winners.stage == "finetune"]
    if tuned.empty:
        return []
    val = runs[runs.stage == "finetune"].groupby("winner").val_acc.mean()
    lines = [
        "## After the fine-tune stage (search space's finetune:, e.g. paper Table 11)",
        "",
        "Each retrained run's kept weights trained on at the fine-tune learning rate; scored once more on "
        f"{test_split}. Reported apart from the main run; it chooses nothing.",
        "",
    ]
    rows = [
        {
            "winner": row.winner,
            "seeds": row.seeds,
            "val acc. after fine-tune": f"{val.get(row.winner, float('nan')):.4f}",
            "accuracy": f"{pct(row.accuracy_mean)} +- {pct(row.accuracy_std)}",
            "F1 of macro P and R": num(row.f1_of_macro_pr_mean),
            "macro F1 (mean of per-class F1)": num(row.macro_f1_mean),
        }
        for row in tuned.itertuples()
    ]
    return lines + [markdown_table(rows), ""]


def _transfer_lines(trials: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """What each winner's trial took from the base (trials.csv's transfer columns), as report lines."""
    if "transfer_loaded" not in trials or trials.transfer_loaded.isna().all():
        return []
    lines = ["## Transfer from the base", ""]
    by_id = trials.set_index("trial_id")
    numbers = dict(zip(trials.trial_id.astype(str), trials.trial))
    for row in summary.itertuples():
        if row.trial in by_id.index:
            t = by_id.loc[row.trial]
            lines.append(
                f"- winner {row.winner} ({_trial_name(numbers, str(row.trial))}): {int(t.transfer_loaded)} tensors "
                f"loaded from the base, {int(t.transfer_new)} new, {int(t.transfer_frozen)} parameters frozen"
            )
    return lines + [""]
