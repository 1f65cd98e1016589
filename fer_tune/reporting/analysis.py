"""``launch.py --analyze NAME``: what a finished search learned, from its Optuna study and trials.csv.

Writes ``analysis.md`` (hyperparameter importances by fANOVA and PED-ANOVA, the paper's factor
tables: the validation score per optimizer, scheduler, freeze, activation, batch size and optimizer x
scheduler, and the compute spent and saved) with ``importance.png``, ``slice.png`` and
``parallel_coordinate.png`` and ``importance.csv``. Validation scores only: PrivateTest is not read here.
Each Optuna trial carries how it ended (user attribute ``fer_tune_status``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd

from fer_tune.data.describe import data_identity, figure_note
from fer_tune.errors import UserError
from fer_tune.files import write_csv_atomic, write_text_atomic
from fer_tune.manifest import read_manifest
from fer_tune.markdown import markdown_table
from fer_tune.reporting.plots import plot_importances, readable_optuna_plot, save_figure
from fer_tune.reporting.report import epochs_saved_by_patience
from fer_tune.run_folder import folder_lock, require_search_folder
from fer_tune.search_folder import (
    MIN_TRIALS_FOR_IMPORTANCE,
    MIN_TRIALS_WHY,
    SCORED_STATUSES,
    SearchFolder,
    trial_label,
)

log = logging.getLogger(__name__)

FACTORS = ("optimizer", "scheduler", "freeze", "activation", "batch_size")
IMPORTANCE_CSV = SearchFolder.IMPORTANCE_CSV


def load_study(folder: Path, name: str):
    """The Optuna study ``name`` of the search in ``folder`` (a :class:`UserError` when it has none)."""
    import optuna

    if not (folder / SearchFolder.OPTUNA_DB).is_file():
        raise UserError(
            f"{folder}: no {SearchFolder.OPTUNA_DB} (the search ran with an older fer-tune, or has not started); "
            f"run the search again with --fresh to keep its Optuna study"
        )
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=SearchFolder(folder).study_storage())
    except (KeyError, SQLAlchemyError) as exc:  # no study of that name / not an SQLite database
        reason = f"no study named {name!r}" if isinstance(exc, KeyError) else "not an SQLite database Optuna reads"
        raise UserError(
            f"{folder / SearchFolder.OPTUNA_DB}: not the Optuna study fer-tune's search wrote ({reason}); run the "
            "search again with --fresh to rebuild it"
        ) from None


def importances(study) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{method: {parameter: importance}} by fANOVA and PED-ANOVA over the finished (COMPLETE) trials, and a
    note for each that could not run; none below :data:`MIN_TRIALS_FOR_IMPORTANCE` finished trials."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, [
            f"not computed: {len(complete)} of {len(study.trials)} trials finished (trials stopped by ASHA, by the "
            f"time budget or by divergence are PRUNED in the study and left out); importances need at least "
            f"{MIN_TRIALS_FOR_IMPORTANCE} finished trials (below that, in bench/bench_importance.py's synthetic "
            f"studies, fANOVA named the parameter that mattered in at most {MIN_TRIALS_WHY})"
        ]
    values = {t.value for t in complete if t.value is not None}
    if len(values) < 2:  # nothing to explain (PED-ANOVA would report equal shares for every parameter)
        told = f"every trial scored {values.pop():.4f}" if values else "no trial finished with a score"
        return {}, [f"not computed: importances explain differences between trial scores, and {told}"]
    return rank_parameters(study)


def rank_parameters(study) -> tuple[dict[str, dict[str, float]], list[str]]:
    """fANOVA's and PED-ANOVA's importances over the study's complete trials, whatever their number."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    found, notes = {}, []
    for method, evaluator in (
        ("fANOVA", FanovaImportanceEvaluator(seed=0)),
        ("PED-ANOVA", PedAnovaImportanceEvaluator()),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found[method] = dict(get_param_importances(study, evaluator=evaluator))
        except (RuntimeError, ValueError) as exc:
            notes.append(f"{method} could not run on this study ({str(exc).splitlines()[0]})")
    return found, notes


def factor_table(trials: pd.DataFrame, factor: str, score: str, mode: str = "max") -> pd.DataFrame:
    """Per value of ``factor`` (the paper's Tables 4-13): trials, best (by the search's ``mode``) and
    median validation score, mean epochs run, GPU- and CPU-hours (scored trials only), best first."""
    table = trials.groupby(trials[factor].astype(str)).agg(
        trials=(score, "size"),
        best=(score, mode),
        median=(score, "median"),
        epochs=("epochs_run", "mean"),
        gpu_hours=("gpu_hours", "sum"),
        cpu_hours=("cpu_hours", "sum"),
    )
    return table.sort_values("best", ascending=mode == "min")


def analyze(folder: Path) -> Path:
    """Write analysis.md and its PNGs into ``folder`` (locked meanwhile); returns the Markdown's path."""
    manifest = read_manifest(require_search_folder(folder, "the analysis"))
    study = load_study(folder, manifest.name)  # refused before anything is written: no study, no lock
    with folder_lock(folder, "analysis"):
        return _analyze(folder, manifest, study)


def _analyze(folder: Path, manifest, study) -> Path:
    from optuna.trial import TrialState

    trials_csv = folder / SearchFolder.TRIALS
    if not trials_csv.is_file():
        raise UserError(f"{folder}: no trials.csv yet; let the search finish (run the same --search again)")
    trials = SearchFolder(folder).trials(manifest.metric)
    score = f"best_{manifest.metric}"
    scored = trials[trials.status.isin(SCORED_STATUSES) & trials[score].notna()]
    found, notes = importances(study)
    lines = [
        f"# What the search `{manifest.name}` learned ({manifest.model})",
        "",
        f"{len(trials)} trials, {len(scored)} with a score. Scores: `{score}`, the best validation "
        f"({'PublicTest' if manifest.metric.startswith('val') else manifest.metric}) {manifest.metric} of each "
        "trial; PrivateTest is not read here. Importances and the plots of every trial use the Optuna "
        f"study's finished (COMPLETE) trials only, each told its best {manifest.metric} "
        f"(`{SearchFolder.OPTUNA_DB}`); a trial stopped by ASHA, the time budget or divergence is PRUNED there. "
        "The factor tables use every scored trial at its best epoch.",
        "",
        data_identity(manifest.data, demo=bool(manifest.smoke))[0],  # the data, as report.md states it
        "",
    ]
    note = figure_note(bool(manifest.smoke))
    lines += _importance_lines(found, notes, folder, len(study.get_trials(states=(TrialState.COMPLETE,))), note)
    lines += _factor_lines(scored, score, manifest.mode)
    lines += _compute_lines(trials, manifest.budget.get("max_epochs"))
    lines += _plot_lines(study, folder, manifest.metric, note)
    path = write_text_atomic(folder / SearchFolder.ANALYSIS, "\n".join(lines) + "\n")
    log.info(f"analysis: {path}")
    return path


def _importance_lines(
    found: dict[str, dict[str, float]], notes: list[str], folder: Path, trials: int, data_note: str
) -> list[str]:
    lines = ["## Hyperparameter importance", "", f"From the {trials} finished (COMPLETE) trials of the study.", ""]
    if found:
        params = sorted(
            {p for values in found.values() for p in values},
            key=lambda p: -max(values.get(p, 0.0) for values in found.values()),
        )
        rows = [
            {"parameter": p, **{m: f"{values[p]:.3f}" if p in values else "-" for m, values in found.items()}}
            for p in params
        ]
        lines.append(markdown_table(rows))
        plot_importances(found, folder / SearchFolder.IMPORTANCE_PNG, trials, data_note)
        write_csv_atomic(pd.DataFrame(found).rename_axis("parameter").reset_index(), folder / IMPORTANCE_CSV)
        lines += [
            "",
            "`-`: a method that leaves out a parameter not every trial has (fANOVA and the scheduler, "
            "which is not sampled when Ranger21 is drawn). PED-ANOVA named the parameter that mattered less "
            "often than fANOVA in bench/bench_importance.py's synthetic studies (72-80% against 92-100% "
            "from 16 trials up): where the two disagree, trust fANOVA more.",
            "",
            "![importance](importance.png)",
        ]
    return lines + [f"- {note}" for note in notes] + [""]


def _factor_lines(scored: pd.DataFrame, score: str, mode: str) -> list[str]:
    lines = [
        "## The paper's factors (validation score per value)",
        "",
        "Caution: a trial that ASHA (or early stopping) ended is compared at the epoch it stopped, so the "
        "scores of short trials understate what they would have reached.",
        "",
    ]
    for factor in FACTORS:
        if factor not in scored or scored[factor].nunique(dropna=True) < 1:
            continue
        lines += [
            f"### {factor}",
            "",
        ]
        rows = [
            {
                "value": value,
                "trials": int(row.trials),
                "best": f"{row.best:.4f}",
                "median": f"{row['median']:.4f}",
                "mean epochs run": f"{row.epochs:.1f}",
                "GPU-hours": f"{row.gpu_hours:.4f}",
                "CPU-hours": f"{row.cpu_hours:.4f}",
            }
            for value, row in factor_table(scored, factor, score, mode).iterrows()
        ]
        lines += [markdown_table(rows), ""]
    if {"optimizer", "scheduler"} <= set(scored):
        pivot = scored.pivot_table(
            index="optimizer", columns=scored.scheduler.fillna("none"), values=score, aggfunc=mode
        )
        lines += [
            "### best score, optimizer x scheduler",
            "",
            markdown_table(pivot.map(lambda v: "" if pd.isna(v) else f"{v:.4f}").reset_index()),
            "",
        ]
    return lines


def _compute_lines(trials: pd.DataFrame, max_epochs: int | None) -> list[str]:
    run = int(trials.epochs_run.sum())
    full = int(len(trials) * max_epochs) if max_epochs else run
    patience = epochs_saved_by_patience(trials)
    lines = [
        "## Compute",
        "",
        f"- {run} trial-epochs run, of the {full} that {len(trials)} trials of {max_epochs} epochs each would "
        f"take ({full - run} saved: ASHA, early stopping ({patience} by patience) and divergence)",
        f"- {trials.wall_time_s.sum() / 3600:.4f} hours of trial time, {trials.gpu_hours.sum():.4f} GPU-hours, "
        f"{trials.cpu_hours.sum():.4f} CPU-hours",
        "",
    ]
    rows = [
        {
            "trial": trial_label(row.trial, str(getattr(row, "trial_id", ""))),
            "status": row.status,
            "epochs run": row.epochs_run,
            "GPU-hours": f"{row.gpu_hours:.4f}",
            "CPU-hours": f"{row.cpu_hours:.4f}",
        }
        for row in trials.itertuples()
    ]
    return lines + [markdown_table(rows), ""]


def _plot_lines(study, folder: Path, metric: str, data_note: str) -> list[str]:
    """slice.png and parallel_coordinate.png from Optuna's matplotlib plots, made readable."""
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    complete, knobs = len(finished), len({name for t in finished for name in t.params}) or 1
    lines = [
        "## Every finished trial",
        "",
        f"Optuna's slice and parallel-coordinate plots of the {complete} finished trials.",
        "",
    ]
    names = {t.number: str(t.user_attrs.get("name", trial_label(t.number + 1))) for t in finished}
    for name, draw, width, by_trial in (
        ("slice", optuna_plots.plot_slice, 2.6 * knobs + 1.5, names),  # Optuna colours its points by trial
        ("parallel_coordinate", optuna_plots.plot_parallel_coordinate, 1.6 * knobs + 5, None),  # by score
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw(study, target_name=f"{metric} (best)")
        except (RuntimeError, ValueError) as exc:
            lines.append(f"- {name}: not drawn ({str(exc).splitlines()[0]})")
            continue
        save_figure(readable_optuna_plot(axes, complete, width, by_trial), folder / f"{name}.png", data_note)
        lines += [f"![{name}]({name}.png)", ""]
    return lines
