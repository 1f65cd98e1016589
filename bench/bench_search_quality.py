"""Does TPE find better configurations when ASHA-stopped trials are told as PRUNED? A synthetic
multi-fidelity problem through fer-tune's real searcher + ASHA wiring, five arms side by side.

    python bench/bench_search_quality.py [--seeds 10] [--trials 40] [--concurrency 4] [--csv PER_SEED.csv]
    python bench/bench_search_quality.py --table-from bench/search_quality_per_seed.csv

(2 cores, all five arms: about 11 min with 10 seeds, 39 min with 30.)

The problem, written down in full. A configuration is (lr, optimizer): lr loguniform 1e-4..1e-1,
optimizer one of sgd_nesterov / adam / ranger / ranger21. Let u = (log10(lr) + 4) / 3 in [0, 1] (0: the
smallest lr). Its validation accuracy after t epochs is

    acc(t) = final * (1 - exp(-t / tau)) + noise,   noise ~ N(0, 0.005) per epoch
    final  = 0.75 - 0.30 * u - 0.04 * [optimizer == sgd_nesterov]
    tau    = 1 + 14 * (1 - u)**2

so the curves cross: a large lr starts fast and plateaus low, a small lr starts slowly and ends high
(the best configuration, lr 1e-4 with any optimizer but SGD, ends at 0.75). ASHA runs up to 27 epochs,
grace period 3, reduction factor 3 (rungs at 3 and 9), at ``--concurrency`` trials at once. The trainable
returns these curves only (no training).

Arms, each ``--trials`` trials, per seed: random search + ASHA (Optuna's RandomSampler); today's TPE +
ASHA (every trial told COMPLETE with its last reported value, as Ray's OptunaSearch does by itself); the
new TPE + ASHA (fer-tune's MarkedOptunaSearch: ASHA-stopped trials PRUNED, finished ones told their
best); and, as diagnostics of what ASHA's first rung costs, the new TPE + ASHA with one rung at epoch 9
(``tpe_grace_9``) and the new TPE without early stopping (``tpe_no_asha``: every trial runs 27 epochs, the
same number of trials, so about three times the epochs). All use fer-tune's TPE settings
(search/searcher.py). The search's pick is the trial with the best reported score (as trials.csv ranks
them); its **regret** is 0.75 minus the *final* value of the picked configuration (its true plateau, what a
full retraining would reach).

A diagnostic of why the two TPE arms differ little: at the end of each run, TPE's "good" set (its top
gamma(n) = min(ceil(0.1 n), 25) trials, Optuna's default) ranked both ways, by last value as today's
wiring tells it, and as Optuna ranks the new wiring's trials (complete ones first by their best value,
then pruned ones by the epoch they reached and their value there); **overlap** is the share of the good
set the two rankings agree on (1: the new semantics changes nothing TPE sees at that point).

The ratio new / today's mean regret comes with a 95% paired percentile-bootstrap interval over seeds
(each resample draws whole seeds, both arms' regrets together); ``--csv`` keeps every search's regret,
overlap and epochs, a row per seed and arm, and ``--table-from`` prints a saved one's table again.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fer_tune.compat import local_ray_on_loopback  # noqa: E402
from fer_tune.files import write_csv_atomic  # noqa: E402
from fer_tune.search.searcher import MarkedOptunaSearch, sampler_settings, tpe_sampler  # noqa: E402
from fer_tune.search.space import Budget, Param, SpaceSampler  # noqa: E402

MAX_EPOCHS, GRACE, REDUCTION = 27, 3, 3
# the diagnostic arms: the new wiring with ASHA's first rung later (one rung, at 9), or no early stopping
FIRST_RUNG = {"random": GRACE, "tpe_last_value": GRACE, "tpe_pruned": GRACE, "tpe_grace_9": 9, "tpe_no_asha": None}
ARMS = tuple(FIRST_RUNG)
CSV_COLUMNS = ("seed", "arm", "regret", "overlap", "epochs")
BEST_FINAL = 0.75
PARAMS = (
    Param("lr", "loguniform", low=1e-4, high=1e-1),
    Param("optimizer", "choice", values=("sgd_nesterov", "adam", "ranger", "ranger21")),
)


def final_and_tau(config: dict) -> tuple[float, float]:
    """The problem's plateau and time constant of a configuration (module docstring)."""
    u = (math.log10(config["lr"]) + 4) / 3
    final = 0.75 - 0.30 * u - 0.04 * (config["optimizer"] == "sgd_nesterov")
    return final, 1 + 14 * (1 - u) ** 2


def curve_trainable(config: dict) -> None:
    """Reports acc(t) for t = 1..MAX_EPOCHS, as a fer-tune trial reports val_acc per epoch."""
    from ray import tune

    final, tau = final_and_tau(config)
    noise = np.random.default_rng(zlib.crc32(repr((config["lr"], config["optimizer"])).encode()))
    for epoch in range(1, MAX_EPOCHS + 1):
        value = final * (1 - math.exp(-epoch / tau)) + noise.normal(0, 0.005)
        tune.report({"val_acc": value, "epoch": epoch})


class LastValueSearch(MarkedOptunaSearch):
    """Today's wiring before issue 22: every trial told COMPLETE with its last reported value."""

    def told(self, trial_id: str, result: dict, status: str) -> dict:
        return result


def rungs(grace: int | None) -> set[int]:
    """The epochs where ASHA may stop a trial (fer-tune's rule), none without early stopping."""
    if grace is None:
        return set()
    return Budget(max_epochs=MAX_EPOCHS, grace_period=grace, reduction_factor=REDUCTION).asha_rungs()


def searcher(arm: str, seed: int):
    import optuna

    sampler = optuna.samplers.RandomSampler(seed=seed) if arm == "random" else tpe_sampler(sampler_settings(seed))
    kind = LastValueSearch if arm == "tpe_last_value" else MarkedOptunaSearch
    return kind(
        max_epochs=MAX_EPOCHS,
        rungs=rungs(FIRST_RUNG[arm]),
        space=SpaceSampler(PARAMS),
        metric="val_acc",
        mode="max",
        sampler=sampler,
    )


def good_set_overlap(curves: list[list[float]]) -> float:
    """Share of TPE's good set (top gamma(n) trials) that ranking by last value and Optuna's PRUNED-aware
    ranking (complete first by best value, then by the epoch reached and the value there) agree on."""
    k = min(math.ceil(0.1 * len(curves)), 25)
    by_last = sorted(range(len(curves)), key=lambda i: -curves[i][-1])[:k]
    by_fidelity = sorted(
        range(len(curves)),
        key=lambda i: (0, -max(curves[i])) if len(curves[i]) == MAX_EPOCHS else (1, -len(curves[i]), -curves[i][-1]),
    )[:k]
    return len(set(by_last) & set(by_fidelity)) / k


def ratio_interval(new: list[float], today: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """mean(new) / mean(today) and its paired percentile-bootstrap interval over seeds (scipy's, seeded)."""

    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(a, axis=axis) / np.maximum(np.mean(b, axis=axis), 1e-12)

    pair = (np.asarray(new, dtype=float), np.asarray(today, dtype=float))
    result = scipy.stats.bootstrap(
        pair,
        ratio,
        paired=True,
        vectorized=True,
        n_resamples=9999,
        confidence_level=level,
        method="percentile",
        random_state=np.random.default_rng(0),
    )
    return float(ratio(*pair)), float(result.confidence_interval.low), float(result.confidence_interval.high)


def csv_problem(path: Path) -> str | None:
    """Why ``--csv`` may not be written (checked before any search), or None: it must be creatable and may
    only replace a file this bench wrote."""
    from fer_tune.errors import UserError
    from fer_tune.files import check_csv_replaceable

    try:
        check_csv_replaceable(path, "--csv", CSV_COLUMNS, "this bench's per-seed CSV")
    except UserError as exc:
        return str(exc)
    return None


def regret(arm: str, seed: int, trials: int, concurrency: int, storage: Path) -> tuple[float, float, int]:
    """One search: its pick's regret, the good-set overlap and the epochs its trials ran in all."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    tuner = tune.Tuner(
        curve_trainable,
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            search_alg=ConcurrencyLimiter(searcher(arm, seed), max_concurrent=concurrency),
            scheduler=None
            if FIRST_RUNG[arm] is None
            else ASHAScheduler(
                time_attr="epoch", max_t=MAX_EPOCHS, grace_period=FIRST_RUNG[arm], reduction_factor=REDUCTION
            ),
            num_samples=trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=f"{arm}_{seed}", storage_path=str(storage), verbose=0),
    )
    fit_started = time.monotonic()
    results = tuner.fit()
    print(f"{arm} seed {seed}: fit {time.monotonic() - fit_started:.0f} s", file=sys.stderr)
    best = max(results, key=lambda r: r.metrics_dataframe["val_acc"].max())  # trials.csv's best_val_acc
    curves = [r.metrics_dataframe.sort_values("epoch")["val_acc"].tolist() for r in results]
    return BEST_FINAL - final_and_tau(best.config)[0], good_set_overlap(curves), sum(map(len, curves))


def summary(frame: pd.DataFrame) -> str:
    """The Markdown table of a run (a row per arm, from the per-seed rows) and each arm's mean regret
    against today's wiring (``tpe_last_value``), with its paired bootstrap interval."""
    lines = [
        "| arm | mean regret | std | median | worst | good-set overlap | epochs per search |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    arms = list(dict.fromkeys(frame.arm))
    for arm in arms:
        rows = frame[frame.arm == arm]
        lines.append(
            f"| {arm} | {rows.regret.mean():.4f} | {rows.regret.std(ddof=0):.4f} | {rows.regret.median():.4f} | "
            f"{rows.regret.max():.4f} | {rows.overlap.mean():.2f} | {rows.epochs.mean():.0f} |"
        )
    if "tpe_last_value" in arms:
        today = frame[frame.arm == "tpe_last_value"].sort_values("seed").regret.tolist()
        lines.append("\nmean regret against today's wiring (tpe_last_value), 95% paired bootstrap over seeds:")
        for arm in (a for a in arms if a != "tpe_last_value"):
            ratio, low, high = ratio_interval(frame[frame.arm == arm].sort_values("seed").regret.tolist(), today)
            name = "new (tpe_pruned)" if arm == "tpe_pruned" else arm
            lines.append(f"- {name} / today's: {ratio:.2f}x ({low:.2f}-{high:.2f}x)")
    return "\n".join(lines)


def read_per_seed(path: Path) -> pd.DataFrame:
    """A per-seed CSV this bench wrote (``--table-from``); exits with one error line otherwise."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        refuse(f"--table-from {path}: cannot be read as a CSV ({exc}); give a file --csv wrote")
    if tuple(frame.columns) != CSV_COLUMNS or frame.empty:
        refuse(f"--table-from {path}: not this bench's per-seed CSV (columns {', '.join(CSV_COLUMNS)})")
    seeds = {arm: sorted(rows.seed) for arm, rows in frame.groupby("arm")}
    if len({tuple(v) for v in seeds.values()}) > 1:
        refuse(f"--table-from {path}: the arms ran different seeds ({seeds}); the ratios pair them seed by seed")
    return frame


def refuse(problem: str) -> NoReturn:
    """One ``error:`` line and exit 2, before anything runs."""
    print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--csv", type=Path, help="also write each search's regret, overlap and epochs here")
    parser.add_argument("--table-from", type=Path, help="print the table of a per-seed CSV (--csv) and run nothing")
    args = parser.parse_args()
    if args.table_from:
        print(summary(read_per_seed(args.table_from)))
        return
    if args.csv and (problem := csv_problem(args.csv)):
        refuse(problem)
    import os
    import tempfile
    import warnings

    import optuna
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    local_ray_on_loopback()
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    started = time.monotonic()
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as storage:
        for seed in range(args.seeds):  # the arms alternate within each seed: drift hits them alike
            for arm in args.arms:
                rows.append((seed, arm, *regret(arm, seed, args.trials, args.concurrency, Path(storage))))
            print(
                f"seed {seed}: "
                + ", ".join(f"{row[1]} {row[2]:.4f}" for row in rows[-len(args.arms) :])
                + f" ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    ray.shutdown()
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    print(f"# final regret, {args.trials} trials, ASHA 27/3/3, {args.concurrency} at once, {args.seeds} seeds\n")
    print(summary(frame))
    if args.csv:
        print(f"per seed: {write_csv_atomic(frame, args.csv)}")
    print(f"\n{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
