"""How many finished trials hyperparameter importances need before they can be read: the calibration of
``MIN_TRIALS_FOR_IMPORTANCE`` (fer_tune/search_folder.py).

    python bench/bench_importance.py [--seeds 20] [--sizes 4 6 8 12 16 24 32]   # ~2 minutes on 2 cores

The problem, written down in full: a search space shaped like fer-tune's (optimizer: choice of
sgd_nesterov / adam / ranger / ranger21; lr: loguniform 1e-4..1e-1; weight_decay: loguniform
1e-6..1e-2; batch_size: choice 16 / 32 / 64; freeze: choice true / false), sampled by Optuna's seeded
TPE as a search samples it (its first 10 trials random). The score is a validation accuracy:

    0.60 - 0.08 * (log10(lr) + 2.5)**2 + 0.02 * [optimizer == adam] + noise,  noise ~ N(0, 0.01)

so lr matters most (a 0.18 swing over its range), optimizer a little, and weight_decay, batch_size
and freeze not at all; the noise is the seed-to-seed spread of a FER2013 validation score (about
one point). For each study size and seed, the study is scored by fANOVA and PED-ANOVA as the analysis
scores it; a method "reads the study right" when its most important parameter is lr. The table gives,
per size, how often each method does, and how often the two agree on the top parameter.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fer_tune.reporting.analysis import rank_parameters  # noqa: E402


def synthetic_study(trials: int, seed: int) -> optuna.Study:
    """The problem above, ``trials`` trials by TPE seeded with ``seed``."""
    noise = np.random.default_rng(seed)

    def objective(trial: optuna.Trial) -> float:
        optimizer = trial.suggest_categorical("optimizer", ["sgd_nesterov", "adam", "ranger", "ranger21"])
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        trial.suggest_categorical("batch_size", [16, 32, 64])
        trial.suggest_categorical("freeze", [True, False])
        return 0.60 - 0.08 * (np.log10(lr) + 2.5) ** 2 + 0.02 * (optimizer == "adam") + noise.normal(0, 0.01)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 8, 12, 16, 24, 32])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    started = time.monotonic()
    print(f"# importances read right (top parameter = lr), {args.seeds} seeds per size\n")
    print("| finished trials | fANOVA top = lr | PED-ANOVA top = lr | the two agree on the top |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes:
        right = {"fANOVA": 0, "PED-ANOVA": 0}
        agree = 0
        for seed in range(args.seeds):
            found, _ = rank_parameters(synthetic_study(size, seed))
            tops = {method: max(values, key=values.get) for method, values in found.items()}
            for method, top in tops.items():
                right[method] += top == "lr"
            agree += len(set(tops.values())) == 1
        n = args.seeds
        print(
            f"| {size} | {right['fANOVA']}/{n} ({right['fANOVA'] / n:.0%}) | "
            f"{right['PED-ANOVA']}/{n} ({right['PED-ANOVA'] / n:.0%}) | {agree}/{n} ({agree / n:.0%}) |",
            flush=True,
        )
    print(f"\n{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
