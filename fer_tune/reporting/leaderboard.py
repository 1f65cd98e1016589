"""``launch.py --report``: every scored search under ``results/`` gathered into ``leaderboard.md``; a
search's winners table read back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fer_tune.files import write_text_atomic
from fer_tune.manifest import read_manifest
from fer_tune.markdown import markdown_table
from fer_tune.reporting.headline import HEADLINE_RULE, PAPER_RESULTS, headline_winner, num, pct
from fer_tune.search_folder import SearchFolder

WINNERS_COLUMNS = (
    "winner",
    "accuracy_mean",
    "accuracy_std",
    "macro_f1_mean",
    "leak_free_accuracy_mean",
    "protocol",
    "val_acc_mean",
)


def read_winners(path: Path) -> pd.DataFrame:
    """A search's winners.csv, or a :class:`UserError` naming it when it is empty, unreadable or incomplete."""
    from fer_tune.errors import UserError

    try:
        winners = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not a readable winners table ({str(exc).splitlines()[0]}); "
            f"re-create it with --retrain {path.parent.name}"
        ) from None
    missing = [c for c in WINNERS_COLUMNS if c not in winners.columns]
    if winners.empty or missing:
        problem = "it has no rows" if winners.empty and not missing else f"column {missing[0]!r} is missing"
        raise UserError(f"{path}: {problem}; re-create it with --retrain {path.parent.name}")
    return winners


def write_leaderboard(results_dir: Path) -> Path:
    """One row per search folder under ``results_dir`` that has a scored retraining (and its ensemble's row)."""
    rows = []
    for scores in sorted(results_dir.glob("*/winners.csv")):
        folder = scores.parent
        winners = read_winners(scores)
        best = winners[winners.winner == headline_winner(winners)].iloc[0]
        model = _model_of(folder)
        paper = PAPER_RESULTS.get(model)
        rows.append(
            {
                "search": folder.name,
                "model": model,
                "winner": int(best.winner),
                "accuracy": f"{pct(best.accuracy_mean)} +- {pct(best.accuracy_std)}",
                "F1 of macro P and R": num(best.get("f1_of_macro_pr_mean")),
                "macro F1 (mean of per-class F1)": num(best.macro_f1_mean),
                "leakage-free acc.": pct(best.leak_free_accuracy_mean),
                "protocol": best.protocol,
                "paper": pct(paper[1]) if paper else "",
                "most important knob (fANOVA, analysis.md)": _top_knob(folder),
            }
        )
        ensembles = folder / SearchFolder.ENSEMBLES
        if ensembles.is_file():  # a separate row beside the headline single model, never instead of it
            chosen = pd.read_csv(ensembles).iloc[0]
            rows.append(
                {
                    "search": f"{folder.name}: ensemble of {int(chosen.networks)} networks",
                    "model": model,
                    "winner": "-",
                    "accuracy": pct(chosen.accuracy),
                    "F1 of macro P and R": num(chosen.f1_of_macro_pr),
                    "macro F1 (mean of per-class F1)": num(chosen.macro_f1),
                    "leakage-free acc.": pct(chosen.leak_free_accuracy),
                    "protocol": best.protocol,
                    "paper": "",
                    "most important knob (fANOVA, analysis.md)": "",
                }
            )
    if not rows:
        from fer_tune.errors import UserError

        raise UserError(f"{results_dir}: no finished, scored search (no */winners.csv); run --search NAME first")
    lines = [
        "# Leaderboard",
        "",
        f"One row per search: its headline winner, {HEADLINE_RULE}. Its PrivateTest figures (ten-crop), "
        "mean +- std over seeds. Below it, where the retraining chose one, the search's ensemble (chosen on "
        "PublicTest by greedy selection, scored once on PrivateTest): a separate row, never the headline.",
        "",
        markdown_table(rows),
    ]
    return write_text_atomic(results_dir / SearchFolder.LEADERBOARD, "\n".join(lines) + "\n")


def _top_knob(folder: Path) -> str:
    """The hyperparameter fANOVA found most important in the search's analysis (blank without one)."""
    path = folder / SearchFolder.IMPORTANCE_CSV
    if not path.is_file():
        return ""
    table = pd.read_csv(path)
    if "fANOVA" not in table or table.fANOVA.isna().all():
        return ""
    row = table.loc[table.fANOVA.idxmax()]
    return f"{row.parameter} ({row.fANOVA:.2f})"


def _model_of(folder: Path) -> str:
    manifest = read_manifest(folder)
    return manifest.model if manifest is not None else "?"
