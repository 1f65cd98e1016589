"""The report of a finished search (``report.md``, ``winners.csv``, PNGs) and the leaderboard."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fer_tune.plots import plot_confusion, plot_curves
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


def write_report(folder: Path, model: str, runs: pd.DataFrame, scored: ScoredRuns, winners_config: dict[int, dict],
                 base_source: str | None) -> Path:
    """Write report.md, winners.csv and the PNGs into ``folder``; returns the report's path."""
    trials = pd.read_csv(folder / "trials.csv")
    summary = scored.winners.merge(
        runs.groupby("winner").agg(trial=("trial", "first"), search_score=("search_score", "first")).reset_index(),
        on="winner")
    keys = ["optimizer", "scheduler", "lr", "weight_decay", "batch_size", "freeze", "epochs"]
    settings_keys = keys + (["activation"] if model.startswith("effnet") else [])
    for key in settings_keys:
        summary[key] = summary.winner.map(lambda w: winners_config[w].get(key))
    summary.to_csv(folder / "winners.csv", index=False)

    best = int(summary.sort_values("accuracy_mean", ascending=False).winner.iloc[0])
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

    cpu_search = trials.cpu_hours.sum()
    gpu_search = trials.gpu_hours.sum()
    retrain_hours = (runs.wall_time_s / 3600)
    lines = [
        f"# {model}: search, retraining and PrivateTest scores",
        "",
        f"Search folder `{folder}`; base weights: {base_source or 'none (trained from scratch)'}.",
        f"Protocol: **{runs.protocol.iloc[0]}** ({'train on Training, select the epoch on PublicTest' if runs.protocol.iloc[0] == 'paper' else 'select on PublicTest, then refit on Training + PublicTest for the selected epochs'}); "
        f"test split **{scored.test_split}** scored once per run, ten-crop unless noted.",
        f"Leakage-free {scored.test_split}: {scored.left_out} test images whose exact pixels also appear in Training left out.",
        "",
        "## Winners (top configurations of the search by validation score)",
        "",
        "| winner | trial | val score in search | " + " | ".join(settings_keys) + " |",
        "|" + "---|" * (3 + len(settings_keys)),
    ]
    for row in summary.itertuples():
        values = " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v)
                            for v in (getattr(row, k) for k in settings_keys))
        lines.append(f"| {row.winner} | {row.trial} | {row.search_score:.4f} | {values} |")
    lines += [
        "",
        f"## {scored.test_split} (mean +- std over seeds; 95% bootstrap interval of the accuracy)",
        "",
        "| winner | seeds | accuracy | 95% CI | single-crop acc. | macro precision | macro recall | macro F1 | leakage-free acc. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples():
        lines.append(
            f"| {row.winner} | {row.seeds} | {_pct(row.accuracy_mean)} +- {_pct(row.accuracy_std)} | "
            f"{_pct(row.accuracy_ci_low)} - {_pct(row.accuracy_ci_high)} | {_pct(row.single_crop_accuracy_mean)} | "
            f"{_num(row.macro_precision_mean)} | {_num(row.macro_recall_mean)} | {_num(row.macro_f1_mean)} | "
            f"{_pct(row.leak_free_accuracy_mean)} |")
    paper = PAPER_RESULTS.get(model)
    lines += ["", "## The paper's published figures (FER2013 PrivateTest, SPEC section 5)", "",
              "| model | accuracy | macro precision | macro recall | macro F1 |", "|---|---|---|---|---|"]
    if paper:
        lines.append(f"| {paper[0]} | {_pct(paper[1])} | {_num(paper[2])} | {_num(paper[3])} | {_num(paper[4])} |")
    lines += [
        "",
        "Compare only like with like: the figures above are for the data in this folder "
        f"(`{scored.test_split}` of the file the search ran on; demo data is not FER2013).",
        "",
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
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


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
    fig.savefig(path)
    plt.close(fig)


def write_leaderboard(results_dir: Path) -> Path:
    """One row per search folder under ``results_dir`` that has a scored retraining."""
    rows = []
    for scores in sorted(results_dir.glob("*/winners.csv")):
        folder = scores.parent
        winners = pd.read_csv(scores)
        best = winners.sort_values("accuracy_mean", ascending=False).iloc[0]
        model = _model_of(folder)
        paper = PAPER_RESULTS.get(model)
        rows.append(f"| {folder.name} | {model} | {_pct(best.accuracy_mean)} +- {_pct(best.accuracy_std)} | "
                    f"{_num(best.macro_f1_mean)} | {_pct(best.leak_free_accuracy_mean)} | {best.protocol} | "
                    f"{_pct(paper[1]) if paper else ''} |")
    if not rows:
        from fer_tune.errors import UserError

        raise UserError(f"{results_dir}: no finished, scored search (no */winners.csv); run --search NAME first")
    lines = ["# Leaderboard", "", "Best winner of each search, PrivateTest (ten-crop), mean +- std over seeds.", "",
             "| search | model | accuracy | macro F1 | leakage-free acc. | protocol | paper |",
             "|---|---|---|---|---|---|---|", *rows]
    path = results_dir / "leaderboard.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _model_of(folder: Path) -> str:
    import yaml

    config = yaml.safe_load((folder / "best_config.yaml").read_text())
    return str(config.get("model"))
