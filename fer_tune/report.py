"""The report of a finished search (``report.md``, ``winners.csv``, PNGs) and the leaderboard."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fer_tune.files import write_csv_atomic, write_text_atomic
from fer_tune.plots import plot_confusion, plot_curves, save_figure
from fer_tune.scoring import ScoredRuns

# SPEC section 5: FER2013 PrivateTest as the paper reports it (accuracy, macro P, R, F1)
PAPER_RESULTS: dict[str, tuple[str, float, float | None, float | None, float | None]] = {
    "vgg_spinal": ("VGGSpinalNet", 0.7445, 0.740, 0.727, 0.733),
    "vgg_progressive_spinal": ("VGGProgressiveSpinalNet", 0.7439, 0.740, 0.725, 0.732),
    "effnetv2s_spinal": ("EfficientNetV2-S-SpinalNet", 0.7211, 0.720, 0.704, 0.712),
    "effnetv2s": ("EfficientNetV2-S", 0.7183, None, None, None),
    "vit_l32_spinal": ("ViT-L/32(21k)-SpinalNet", 0.7160, 0.718, 0.702, 0.710),
    "vit_l32": ("ViT-L/32(21k)", 0.7127, None, None, None),
    "vgg": ("VGGNet (Khaireddin & Chen; PublicTest, selected on PrivateTest)", 0.7328, None, None, None),
}


def _pct(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value * 100:.2f}%"


def _num(value: float | None) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.3f}"


HEADLINE_RULE = ("the winner with the best mean PublicTest (validation) accuracy over its retraining seeds "
                 "(ties: the better search rank); PrivateTest chooses nothing")


def headline_winner(winners: pd.DataFrame) -> int:
    """The winner whose test figures stand beside the paper's, chosen on validation only (HEADLINE_RULE)."""
    if "headline" in winners and winners.headline.any():
        return int(winners[winners.headline.astype(bool)].winner.iloc[0])
    ranked = winners.sort_values(["val_acc_mean", "winner"], ascending=[False, True], kind="stable")
    return int(ranked.winner.iloc[0])


def write_report(folder: Path, model: str, runs: pd.DataFrame, scored: ScoredRuns, winners_config: dict[int, dict],
                 base_source: str | None) -> Path:
    """Write report.md, winners.csv and the PNGs into ``folder``; returns the report's path."""
    trials = pd.read_csv(folder / "trials.csv")
    if "stage" not in runs:
        runs = runs.assign(stage="main")
    finetuned = _finetune_lines(scored.winners, runs, scored.test_split)
    runs = runs[runs.stage == "main"]
    summary = scored.winners[scored.winners.stage == "main"].merge(
        runs.groupby("winner").agg(trial=("trial", "first"), search_score=("search_score", "first"),
                                   val_acc_mean=("val_acc", "mean")).reset_index(),
        on="winner")
    best = headline_winner(summary)
    summary["headline"] = summary.winner == best
    keys = ["optimizer", "scheduler", "lr", "weight_decay", "batch_size", "freeze", "epochs"]
    settings_keys = keys + (["activation"] if model.startswith("effnet") else [])
    for key in settings_keys:
        summary[key] = summary.winner.map(lambda w: winners_config[w].get(key))
    write_csv_atomic(summary, folder / "winners.csv")

    plot_confusion(scored.confusion_by_winner[best], folder / "confusion_matrix.png",
                   f"{model} winner {best}, {scored.test_split} (ten-crop, all seeds, row-normalised)")
    curves = {}
    for run in runs.itertuples():
        history = pd.read_csv(run.history)
        curves[f"winner {run.winner} seed {run.seed}"] = history[history.phase == "select"].val_acc.tolist()
    plot_curves(curves, folder / "learning_curves.png", f"{model}: retraining, validation accuracy", "val_acc")
    search_curves, best_so_far, running = {}, [], None
    for row in trials.sort_values("trial").itertuples():
        progress = Path(row.trial_path) / "progress.csv"
        if progress.is_file():
            values = pd.read_csv(progress)["val_acc"].tolist()
            search_curves[f"trial {row.trial}"] = values
            if values:
                running = max(values) if running is None else max(running, max(values))
        best_so_far.append(running)
    _plot_search(search_curves, best_so_far, folder / "search.png", model)

    lines_transfer = _transfer_lines(trials, summary)
    cpu_search = trials.cpu_hours.sum()
    gpu_search = trials.gpu_hours.sum()
    retrain_hours = (runs.wall_time_s / 3600)
    lines = [
        f"# {model}: search, retraining and PrivateTest scores",
        "",
        f"Search folder `{folder}`; base weights: {base_source or 'none (trained from scratch)'}.",
        f"Protocol: **{runs.protocol.iloc[0]}** ({'train on Training, select the epoch on PublicTest' if runs.protocol.iloc[0] == 'paper' else 'select on PublicTest, then refit on Training + PublicTest for the selected epochs'}); "
        f"test split **{scored.test_split}** scored once per run, ten-crop unless noted.",
        f"Leakage-free {scored.test_split}: {scored.left_out} test images whose exact pixels also appear in the "
        f"training data ({'Training' if runs.protocol.iloc[0] == 'paper' else 'Training or PublicTest'}) left out.",
        "",
        "## Winners (top configurations of the search by validation score)",
        "",
        "| winner | trial | val score in search | mean val acc. in retraining | " + " | ".join(settings_keys) + " |",
        "|" + "---|" * (4 + len(settings_keys)),
    ]
    for row in summary.itertuples():
        values = " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                            for v in (getattr(row, k) for k in settings_keys))
        lines.append(f"| {row.winner} | {row.trial} | {row.search_score:.4f} | {row.val_acc_mean:.4f} | {values} |")
    head = summary[summary.headline].iloc[0]
    paper = PAPER_RESULTS.get(model)
    lines += [
        "",
        f"## Headline: winner {best}",
        "",
        f"Chosen as {HEADLINE_RULE}.",
        "",
        f"| | accuracy ({scored.test_split}, ten-crop) | macro precision | macro recall | "
        "F1 of macro P and R | macro F1 (mean of per-class F1) |",
        "|---|---|---|---|---|---|",
        f"| fer-tune winner {best} ({head.seeds} seeds, mean) | {_pct(head.accuracy_mean)} +- {_pct(head.accuracy_std)} | "
        f"{_num(head.macro_precision_mean)} | {_num(head.macro_recall_mean)} | {_num(head.f1_of_macro_pr_mean)} | "
        f"{_num(head.macro_f1_mean)} |",
    ]
    if paper:
        lines.append(f"| paper: {paper[0]} | {_pct(paper[1])} | {_num(paper[2])} | {_num(paper[3])} | "
                     f"{_num(paper[4])} | |")
    lines += [
        "",
        "The paper's \"macro F1\" equals 2PR/(P+R) of its macro precision and recall (its four F1 values match "
        "that to the third decimal), so it is compared with the column *F1 of macro P and R*; scikit-learn's "
        "macro F1 (the mean of the per-class F1 scores) is shown beside it.",
        "",
        f"## {scored.test_split}, every winner (mean +- std over seeds; 95% bootstrap interval of the accuracy)",
        "",
        "Shown for completeness; these figures choose nothing.",
        "",
        "| winner | seeds | accuracy | 95% CI | single-crop acc. | macro precision | macro recall | "
        "F1 of macro P and R | macro F1 (mean of per-class F1) | leakage-free acc. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples():
        lines.append(
            f"| {row.winner}{' (headline)' if row.headline else ''} | {row.seeds} | {_pct(row.accuracy_mean)} +- "
            f"{_pct(row.accuracy_std)} | "
            f"{_pct(row.accuracy_ci_low)} - {_pct(row.accuracy_ci_high)} | {_pct(row.single_crop_accuracy_mean)} | "
            f"{_num(row.macro_precision_mean)} | {_num(row.macro_recall_mean)} | {_num(row.f1_of_macro_pr_mean)} | "
            f"{_num(row.macro_f1_mean)} | {_pct(row.leak_free_accuracy_mean)} |")
    lines += [
        "",
        "Compare only like with like: the figures above are for the data in this folder "
        f"(`{scored.test_split}` of the file the search ran on; demo data is not FER2013).",
        "",
        *lines_transfer,
        *finetuned,
        "## Compute",
        "",
        f"- search: {len(trials)} trials, {trials.epochs_run.sum()} trial-epochs, "
        f"{cpu_search:.4f} CPU-hours, {gpu_search:.4f} GPU-hours",
        f"- retraining: {len(runs)} runs, {(retrain_hours * runs.cpus).sum():.4f} CPU-hours, "
        f"{(retrain_hours * runs.gpus).sum():.4f} GPU-hours",
        "",
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
    return write_text_atomic(folder / "report.md", "\n".join(lines) + "\n")


def _finetune_lines(winners: pd.DataFrame, runs: pd.DataFrame, test_split: str) -> list[str]:
    """The fine-tune stage's own table (paper Table 11), apart from the main run's figures."""
    tuned = winners[winners.stage == "finetune"]
    if tuned.empty:
        return []
    val = runs[runs.stage == "finetune"].groupby("winner").val_acc.mean()
    lines = ["## After the fine-tune stage (search space's finetune:, e.g. paper Table 11)", "",
             "Each retrained run's kept weights trained on at the fine-tune learning rate; scored once more on "
             f"{test_split}. Reported apart from the main run; it chooses nothing.", "",
             "| winner | seeds | val acc. after fine-tune | accuracy | F1 of macro P and R | macro F1 (mean of per-class F1) |",
             "|---|---|---|---|---|---|"]
    for row in tuned.itertuples():
        lines.append(f"| {row.winner} | {row.seeds} | {val.get(row.winner, float('nan')):.4f} | "
                     f"{_pct(row.accuracy_mean)} +- {_pct(row.accuracy_std)} | {_num(row.f1_of_macro_pr_mean)} | "
                     f"{_num(row.macro_f1_mean)} |")
    return lines + [""]


def _transfer_lines(trials: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """What each winner's trial took from the base (trials.csv's transfer columns), as report lines."""
    if "transfer_loaded" not in trials or trials.transfer_loaded.isna().all():
        return []
    lines = ["## Transfer from the base", ""]
    by_id = trials.set_index("trial_id")
    for row in summary.itertuples():
        if row.trial in by_id.index:
            t = by_id.loc[row.trial]
            lines.append(f"- winner {row.winner} (trial {row.trial}): {int(t.transfer_loaded)} tensors loaded from "
                         f"the base, {int(t.transfer_new)} new, {int(t.transfer_frozen)} parameters frozen")
    return lines + [""]


def _plot_search(curves: dict[str, list[float]], best_so_far: list, path: Path, model: str) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for name, values in curves.items():
        left.plot(range(1, len(values) + 1), values, marker="o", markersize=2, linewidth=1, alpha=0.7)
        if values:
            left.scatter([len(values)], [values[-1]], s=12, color="black", zorder=3)
    left.set_xlabel("epoch")
    left.set_ylabel("val_acc")
    left.set_title(f"{model}: every trial (dots: where it ended)", fontsize=10)
    right.plot(range(1, len(best_so_far) + 1), best_so_far, drawstyle="steps-post")
    right.set_xlabel("trial")
    right.set_ylabel("best val_acc so far")
    right.set_title("best so far", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


WINNERS_COLUMNS = ("winner", "accuracy_mean", "accuracy_std", "macro_f1_mean", "leak_free_accuracy_mean", "protocol",
                   "val_acc_mean")


def read_winners(path: Path) -> pd.DataFrame:
    """A search's winners.csv, or a :class:`UserError` naming it when it is empty, unreadable or incomplete."""
    from fer_tune.errors import UserError

    try:
        winners = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable winners table ({str(exc).splitlines()[0]}); "
                        f"re-create it with --retrain {path.parent.name}") from None
    missing = [c for c in WINNERS_COLUMNS if c not in winners.columns]
    if winners.empty or missing:
        problem = "it has no rows" if winners.empty and not missing else f"column {missing[0]!r} is missing"
        raise UserError(f"{path}: {problem}; re-create it with --retrain {path.parent.name}")
    return winners


def write_leaderboard(results_dir: Path) -> Path:
    """One row per search folder under ``results_dir`` that has a scored retraining."""
    rows = []
    for scores in sorted(results_dir.glob("*/winners.csv")):
        folder = scores.parent
        winners = read_winners(scores)
        best = winners[winners.winner == headline_winner(winners)].iloc[0]
        model = _model_of(folder)
        paper = PAPER_RESULTS.get(model)
        rows.append(f"| {folder.name} | {model} | {int(best.winner)} | {_pct(best.accuracy_mean)} +- "
                    f"{_pct(best.accuracy_std)} | {_num(best.get('f1_of_macro_pr_mean'))} | {_num(best.macro_f1_mean)} | "
                    f"{_pct(best.leak_free_accuracy_mean)} | {best.protocol} | {_pct(paper[1]) if paper else ''} |")
    if not rows:
        from fer_tune.errors import UserError

        raise UserError(f"{results_dir}: no finished, scored search (no */winners.csv); run --search NAME first")
    lines = ["# Leaderboard", "",
             f"One row per search: its headline winner, {HEADLINE_RULE}. Its PrivateTest figures (ten-crop), "
             "mean +- std over seeds.", "",
             "| search | model | winner | accuracy | F1 of macro P and R | macro F1 (mean of per-class F1) | "
             "leakage-free acc. | protocol | paper |",
             "|---|---|---|---|---|---|---|---|---|", *rows]
    return write_text_atomic(results_dir / "leaderboard.md", "\n".join(lines) + "\n")


def _model_of(folder: Path) -> str:
    import yaml

    config = yaml.safe_load((folder / "best_config.yaml").read_text())
    return str(config.get("model"))
