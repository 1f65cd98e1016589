"""Do ASHA's rungs and the search's patience judge every schedule fairly? Real FER2013 curves of a fixed panel
of configurations from the paper's grid, each trained to the end, then judged from the curves alone (issue 42).

    python bench/bench_rung_fidelity.py --data fer2013.csv [--space vgg] [--width 0.0625] [--epochs 27]
                                        [--out bench/rung_fidelity]
    python bench/bench_rung_fidelity.py --analyze bench/rung_fidelity/curves.csv [--space vgg] [--epochs 27]

Each configuration is trained by fer-tune's own ``launch.py train`` (a config YAML made by the space's
``train_config``, exactly as a search trial's: every schedule scaled to ``--epochs`` as the search scales
it to ``max_epochs``), at ``--width`` of the paper's VGGNet, on the CPU unless a GPU is there; the runs
live in ``OUT/train/<name>/`` and a run cut short continues (``--resume``) when the command is run again.
Every curve goes to ``OUT/curves.csv`` (configuration, epoch, PublicTest ten-crop val_acc, lr, epoch
seconds), so that the analysis reruns without training (``--analyze``).

The judgement, from the curves only. ASHA's rungs sit at the same fractions of ``--epochs`` as the
shipped space's rungs of its ``max_epochs`` (vgg: 10, 30, 90 of 200 -> 1, 4, 12 of 27), with the space's
reduction factor; at each rung the configurations that reached it are ranked by the score they report
there (the epoch's val_acc, what Ray's ASHA compares) and the best 1 / reduction_factor of them (at least
one) go on: a synchronous approximation of asynchronous ASHA, which compares each trial with the scores
recorded at its rung so far. Patience is the space's ``patience`` at the same fraction, applied by
fer-tune's own rule (``engine.stalled``). Reported: where ASHA and patience would have stopped each
configuration, Kendall's tau (scipy) between each rung's scores and the final scores (best val_acc over
all epochs: what the search ranks), and whether the best final configuration survives every rung.
Validation scores only: PrivateTest is never read.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import scipy.stats
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fer_tune.files import write_atomic, write_csv_atomic  # noqa: E402
from fer_tune.search.space import SearchSpace, paper_point  # noqa: E402
from fer_tune.search.space_file import load_search_space  # noqa: E402
from fer_tune.training.engine import stalled  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PANEL_LR = {"sgd_nesterov": 0.01, "adam": 1e-3, "ranger": 1e-3, "ranger21": 1e-3}  # each optimizer's usual lr
PANEL = (  # (name, optimizer, scheduler): the panel, plus Ranger21 (the paper's winner elsewhere)
    ("sgd-plateau", "sgd_nesterov", "plateau"),
    ("sgd-cosine", "sgd_nesterov", "cosine"),
    ("sgd-step", "sgd_nesterov", "step"),
    ("adam-plateau", "adam", "plateau"),
    ("ranger-cosine", "ranger", "cosine"),
    ("ranger21", "ranger21", "none"),
)


def panel(space: SearchSpace) -> dict[str, dict]:
    """The panel's sampled values: the paper trial (first), then :data:`PANEL` at the paper trial's
    weight decay and batch size, each optimizer at its usual learning rate."""
    paper = paper_point(space)
    configs = {"paper": paper}
    for name, optimizer, scheduler in PANEL:
        config = {**paper, "optimizer": optimizer, "scheduler": scheduler, "lr": PANEL_LR[optimizer]}
        if config not in configs.values():  # vgg's paper trial is SGD-Nesterov with plateau at lr 0.01
            configs[name] = config
    return configs


def scaled_judges(space: SearchSpace, epochs: int) -> tuple[list[int], int, int]:
    """(rungs, reduction factor, patience) at ``epochs``: the space's at the same fractions of max_epochs."""
    budget = space.budget
    rungs = sorted({max(1, round(r * epochs / budget.max_epochs)) for r in budget.asha_rungs()} - {epochs})
    patience = max(1, round(budget.patience * epochs / budget.max_epochs)) if budget.patience else 0
    return rungs, budget.reduction_factor, patience


def train_panel(space: SearchSpace, data: Path, width: float, epochs: int, out: Path) -> pd.DataFrame:
    """Train every panel configuration to the end with ``launch.py train`` (continuing a run cut short);
    returns the curves, also written to ``out/curves.csv``."""
    frames = []
    for name, sampled in panel(space).items():
        run = out / "train" / name
        config = space.train_config({**sampled, "width": width}, epochs=epochs).to_dict()
        path = out / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp, c=config: Path(tmp).write_text(yaml.safe_dump(c, sort_keys=False)))
        done = (run / "metrics.csv").is_file() and len(pd.read_csv(run / "metrics.csv")) >= epochs
        if not done:
            command = [sys.executable, str(ROOT / "launch.py"), "train", "--data", str(data)]
            if (run / "last.pt").is_file():  # a run cut short: it continues with its own config.yaml
                command += ["--resume", str(run)]
            else:
                command += ["--config", str(path), "--results", str(out), "--name", name]
            started = time.perf_counter()
            print(f"training {name}: {config['optimizer']} / {config['scheduler']}, {epochs} epochs", flush=True)
            subprocess.run(command, check=True)
            print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
        metrics = pd.read_csv(run / "metrics.csv")
        frames.append(metrics[["epoch", "val_acc", "lr", "epoch_time"]].assign(config=name))
    curves = pd.concat(frames, ignore_index=True)[["config", "epoch", "val_acc", "lr", "epoch_time"]]
    write_csv_atomic(curves, out / "curves.csv")
    return curves


def judge(curves: pd.DataFrame, rungs: list[int], reduction: int, patience: int) -> tuple[pd.DataFrame, list[dict]]:
    """Per configuration: final score, where patience and ASHA would stop it; per rung: Kendall's tau
    between the rung's scores and the final ones, and who goes on."""
    scores = {
        name: group.sort_values("epoch")["val_acc"].tolist() for name, group in curves.groupby("config", sort=False)
    }
    final = {name: max(s) for name, s in scores.items()}
    patience_stop = {}
    for name, s in scores.items():
        patience_stop[name] = next((e for e in range(1, len(s) + 1) if stalled(s[:e], patience)), None)
    alive, asha_stop, table = list(scores), dict.fromkeys(scores), []
    for rung in rungs:
        at_rung = {name: scores[name][rung - 1] for name in alive if len(scores[name]) >= rung}
        pairs = ([at_rung[n] for n in at_rung], [final[n] for n in at_rung])
        tau = scipy.stats.kendalltau(*pairs).statistic if len(at_rung) > 1 else math.nan  # one: no ranking
        keep = max(1, math.floor(len(at_rung) / reduction))
        ranked = sorted(at_rung, key=at_rung.get, reverse=True)
        for name in ranked[keep:]:
            asha_stop[name] = rung
        alive = ranked[:keep]
        table.append({"rung": rung, "judged": len(at_rung), "kendall_tau": tau, "go_on": ", ".join(alive)})
    best = max(final, key=final.get)
    rows = pd.DataFrame(
        {
            "config": list(scores),
            "final_best_val_acc": [final[n] for n in scores],
            "best_epoch": [scores[n].index(final[n]) + 1 for n in scores],
            "asha_stops_at": pd.array([asha_stop[n] for n in scores], dtype="Int64"),
            "patience_stops_at": pd.array([patience_stop[n] for n in scores], dtype="Int64"),
            "best_overall": [n == best for n in scores],
        }
    )
    return rows, table


def report(curves: pd.DataFrame, space: SearchSpace, epochs: int) -> str:
    """The Markdown of the judgement (what bench/README.md records)."""
    rungs, reduction, patience = scaled_judges(space, epochs)
    rows, table = judge(curves, rungs, reduction, patience)
    best = rows.loc[rows.best_overall, "config"].iloc[0]
    survives = rows.loc[rows.best_overall, "asha_stops_at"].isna().iloc[0]
    minutes = curves["epoch_time"].sum() / 60
    lines = [
        f"Space `{space.name}`, {epochs} epochs; ASHA rungs {rungs} (reduction {reduction}), patience {patience} "
        f"epochs; PublicTest ten-crop val_acc; {minutes:.1f} min of training in all (the epochs' own time).",
        "",
        rows.astype({"asha_stops_at": object, "patience_stops_at": object})
        .fillna("never")
        .to_markdown(index=False, floatfmt=".4f"),
        "",
        pd.DataFrame(table).to_markdown(index=False, floatfmt=".3f"),
        "",
        f"Best final configuration: {best}; it {'survives every rung' if survives else 'is stopped by ASHA'}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("FER2013_CSV"))
    parser.add_argument("--space", default="vgg")
    parser.add_argument("--width", type=float, default=1 / 16)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "rung_fidelity")
    parser.add_argument("--analyze", type=Path, help="a curves.csv this bench wrote: judge it, train nothing")
    args = parser.parse_args()
    space = load_search_space(args.space)
    if args.analyze is not None:
        curves = pd.read_csv(args.analyze)
    elif args.data is None or not Path(args.data).is_file():
        print(
            "error: --data: give the real fer2013.csv (or set FER2013_CSV); this bench measures real data",
            file=sys.stderr,
        )
        sys.exit(2)
    else:
        curves = train_panel(space, Path(args.data), args.width, args.epochs, args.out)
    print(report(curves, space, args.epochs))


if __name__ == "__main__":
    main()
