"""Command line: ``python launch.py --search NAME`` and the ``train`` / ``evaluate`` / ``predict`` / ``export`` /
``data`` commands.

Every user mistake ends as one ``error:`` line naming the file / row / key and the fix, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fer_tune.errors import UserError
from fer_tune.run_folder import check_run_name
from fer_tune.search.space import RANGES

COMMANDS = ("train", "evaluate", "predict", "export", "data", "demo-data")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one ``error:`` line (exit 2) like every other user mistake."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}; see {self.prog} --help")


# every number the search command takes: (what is allowed, the check), the YAML's rule where the
# option overrides a YAML setting; None = not given
SEARCH_NUMBERS = {
    "trials": RANGES["num_trials"],
    **{name: RANGES[name] for name in ("max_epochs", "gpus_per_trial", "cpus_per_trial", "top_k", "seeds")},
    "seed": ("0 to 2**32 - 1", lambda v: 0 <= v < 2**32),
}


def _gpu_share(text: str) -> float | str:
    """``--gpus-per-trial``: a number, or ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value: {text!r} (a number such as 0.5, or auto)") from None


def check_numbers(args: argparse.Namespace, rules: dict) -> None:
    """One :class:`UserError` for the first option outside its range (before anything starts)."""
    for dest, (allowed, ok) in rules.items():
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            raise UserError(f"--{dest.replace('_', '-')} {value!r} is not allowed; use {allowed}")

SEARCH_HELP = """\
fer-tune: hyperparameter search for facial-expression recognition on FER2013.

  python launch.py --search vgg_spinal --smoke       # the whole path on built-in demo data, CPU, ~2 min
  python launch.py --search vgg --data data/fer2013.csv
  python launch.py --list                            # the search spaces and what each explores
  python launch.py train --config results/vgg/best_config.yaml --data data/fer2013.csv
  python launch.py evaluate --checkpoint results/vgg/best_model.pt --data data/fer2013.csv
  python launch.py predict --checkpoint results/vgg/best_model.pt photos/ clip.mp4   # faces -> CSV
  python launch.py export --checkpoint results/vgg/best_model.pt                     # -> ONNX, checked
  python launch.py data data/fer2013.csv             # describe a data file

A search runs Optuna (TPE) + ASHA in Ray Tune on a local Ray instance, or on the cluster in
RAY_ADDRESS. It selects on PublicTest (validation) only. Run the same command again to resume.
"""


def _search_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py", description=SEARCH_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search", metavar="NAME", help="search space to run: a name from --list or a .yaml path")
    p.add_argument("--list", action="store_true", help="list the search spaces and what each explores")
    p.add_argument("--data", metavar="PATH", help="fer2013.csv (or another layout; see `launch.py data`)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budgets on the built-in demo data (or --data), CPU only: checks the whole path")
    p.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the YAML's)")
    p.add_argument("--max-epochs", type=int, metavar="N", help="epochs of a trial ASHA never stops")
    p.add_argument("--gpus-per-trial", type=_gpu_share, metavar="F",
                   help="GPU share per trial, e.g. 0.5; auto: as many trials per GPU as fit (a probe measures one)")
    p.add_argument("--cpus-per-trial", type=float, metavar="N", help="CPUs per trial")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler and the base training")
    p.add_argument("--name", help="results folder name under --results (default: the search name)")
    p.add_argument("--results", default="results", metavar="DIR", help="where results go (default: results/)")
    p.add_argument("--base-checkpoint", metavar="PATH",
                   help="weights to transfer from (default: results/<base>/best_model.pt, else the base is trained first)")
    p.add_argument("--pretrained", metavar="DIR",
                   help="ViT: a local folder of pretrained weights (a copy of google/vit-large-patch32-224-in21k "
                        "saved with save_pretrained), shipped to every trial; 'from_scratch' for random weights")
    p.add_argument("--retrain", metavar="NAME",
                   help="retrain the winners of the finished search results/NAME and score them on PrivateTest")
    p.add_argument("--no-retrain", action="store_true", help="stop after the search (no retraining, no report)")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="configurations to retrain (default 3; the YAML's smoke.retrain with --smoke)")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per configuration (default 3; the YAML's smoke.retrain with --smoke)")
    p.add_argument("--protocol", default="paper", choices=["paper", "trainval"],
                   help="paper: train on Training, select on PublicTest; trainval: then refit on Training + PublicTest")
    p.add_argument("--report", action="store_true", help="gather every scored search under --results into leaderboard.md")
    p.add_argument("--analyze", metavar="NAME",
                   help="what the finished search results/NAME learned: importances, factor tables, plots -> analysis.md")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fresh", action="store_true", help="discard an earlier search of this name and start over")
    g.add_argument("--resume", action="store_true", help="continue an earlier search (an error if there is none)")
    return p


def _train_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py train", description="Train one configuration and keep its best checkpoint.")
    p.add_argument("--config", metavar="YAML", help="a config such as results/<name>/best_config.yaml")
    p.add_argument("--data", metavar="PATH", help="fer2013.csv (required unless --smoke)")
    p.add_argument("--smoke", action="store_true", help="demo data and a tiny budget: checks a config in seconds")
    p.add_argument("--model", help="vgg, vgg_spinal, vgg_progressive_spinal, effnetv2s, effnetv2s_spinal, vit_l32, vit_l32_spinal")
    for name, kind in (("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                       ("momentum", float), ("width", float), ("seed", int)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--optimizer", help="sgd_nesterov | adam | ranger | ranger21")
    p.add_argument("--scheduler", help="plateau | cosine | step | none (ranger21 needs none)")
    p.add_argument("--activation", help="swish | mish (EfficientNet)")
    p.add_argument("--pretrained", dest="pretrained_path", metavar="DIR", help="local pretrained ViT folder")
    p.add_argument("--base-checkpoint", metavar="PATH", help="transfer weights by name from this checkpoint")
    p.add_argument("--freeze", action="store_true", default=None, help="freeze the transferred weights")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--name", help="run folder under results/train/ (default: model and time)")
    p.add_argument("--results", default="results", metavar="DIR")
    return p


def _evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py evaluate", description="Score a checkpoint on one split.")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--data", required=True, metavar="PATH")
    p.add_argument("--split", default=None, help="split name (default: the test split, PrivateTest)")
    p.add_argument("--out", metavar="DIR", help="where the confusion-matrix PNG goes (default: beside the checkpoint)")
    p.add_argument("--device")
    return p


def _predict_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py predict", description="Find faces in images, folders or videos and classify their "
               "expressions with a trained checkpoint; writes one CSV row per face.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="an image, a folder of images, or a video file")
    p.add_argument("--checkpoint", required=True, metavar="PT",
                   help="e.g. results/<name>/best_model.pt or winners/*.pt, or an .onnx file `export` wrote")
    p.add_argument("--out", default="results/predict/predictions.csv", metavar="CSV",
                   help="the CSV to write (default: results/predict/predictions.csv)")
    p.add_argument("--annotate", metavar="DIR", help="also write copies of the images with boxes and labels drawn")
    p.add_argument("--no-detect", action="store_true",
                   help="take every image whole as a face crop (images of at most 64x64 pixels always are)")
    p.add_argument("--crops", choices=["ten", "single"],
                   help="evaluation views: ten 40x40 crops averaged (as scored; the default), or the centre crop; "
                        "ViT has one view; an .onnx file has its views inside")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="faces per batch on the device")
    p.add_argument("--every", type=int, default=1, metavar="N", help="videos: classify every N-th frame")
    p.add_argument("--min-face", type=int, default=32, metavar="PX", help="smallest face the detector looks for")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    return p


PREDICT_NUMBERS = {
    "batch_size": ("a whole number 1 to 4096", lambda v: 1 <= v <= 4096),
    "every": ("a whole number 1 or more", lambda v: v >= 1),
    "min_face": ("a whole number 8 to 4096", lambda v: 8 <= v <= 4096),
}


def _export_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py export", description="Export a checkpoint as a self-contained model file and "
               "check that it computes what PyTorch computes.")
    p.add_argument("--checkpoint", required=True, metavar="PT")
    p.add_argument("--format", default="onnx", choices=["onnx", "pt2"],
                   help="onnx (ONNX Runtime, default) or pt2 (torch.export, the successor of TorchScript)")
    p.add_argument("--out", metavar="FILE", help="default: beside the checkpoint, same name, .onnx / .pt2")
    p.add_argument("--crops", default="ten", choices=["ten", "single"],
                   help="views inside the graph: ten 40x40 crops averaged (as scored), or the centre crop")
    p.add_argument("--data", metavar="PATH", help="real faces for the parity check (default: the built-in demo faces)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``launch.py`` and the ``fer-tune`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            return {"train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict, "export": _cmd_export,
                    "data": _cmd_data, "demo-data": _cmd_demo}[argv[0]](argv[1:])
        return _cmd_search(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130


def _load_data(path: str | None, smoke: bool):
    from fer_tune.data.fer2013 import load_fer
    from fer_tune.data.demo import SMOKE_DEMO, default_demo_csv

    if path:
        data = load_fer(path)
    elif smoke:
        demo = default_demo_csv(SMOKE_DEMO)
        print(f"data: built-in demo faces (not FER2013) from {demo}")
        data = load_fer(demo)
    else:
        raise UserError("no data given: pass --data PATH/TO/fer2013.csv, or --smoke for the built-in demo data")
    for note in data.notes:
        print(f"note: {note}")
    data.role("train"), data.role("val")  # both must hold rows before anything starts
    return data


def _cmd_search(argv: list[str]) -> int:
    args = _search_parser().parse_args(argv)
    check_numbers(args, SEARCH_NUMBERS)
    for option in ("name", "retrain", "analyze"):
        if getattr(args, option) is not None:
            check_run_name(getattr(args, option), f"--{option}")
    if args.list:
        return _cmd_list()
    if args.report:
        from fer_tune.reporting.report import write_leaderboard

        print(f"leaderboard: {write_leaderboard(Path(args.results))}")
        return 0
    if args.analyze:
        folder = Path(args.results) / args.analyze
        if not folder.is_dir():
            raise UserError(f"{folder}: no such search folder; run --search first (or give --results)")
        from fer_tune.reporting.analysis import analyze

        analyze(folder)
        return 0
    from fer_tune.pipeline import retrain_and_report, search_to_report

    if args.retrain:
        folder = Path(args.results) / args.retrain
        if not folder.is_dir():
            raise UserError(f"{folder}: no such search folder; run --search first (or give --results)")
        from fer_tune.run_folder import require_search_folder

        require_search_folder(folder)  # before any data is read
        retrain_and_report(folder, _load_data(args.data, args.smoke), _retrain_options(args))
        return 0
    if not args.search:
        _search_parser().print_help()
        return 2
    from fer_tune.models import check_pretrained_choice
    from fer_tune.search.run import SearchOptions
    from fer_tune.search.space import load_search_space

    space = load_search_space(args.search)  # a broken YAML fails before any data is read
    check_pretrained_choice(space.model, args.pretrained or space.fixed.get("pretrained_path"), space.path)
    data = _load_data(args.data, args.smoke)
    opts = SearchOptions(
        results_dir=Path(args.results), name=args.name, trials=args.trials, max_epochs=args.max_epochs,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial, seed=args.seed,
        fresh=args.fresh, resume=args.resume, smoke=args.smoke, base_checkpoint=args.base_checkpoint,
        pretrained=args.pretrained,
    )
    search_to_report(args.search, data, opts, None if args.no_retrain else _retrain_options(args))
    return 0


def _retrain_options(args: argparse.Namespace):
    """The retraining's options from the command line (None = the search space's own)."""
    from fer_tune.search.retrain import RetrainOptions

    return RetrainOptions(top_k=args.top_k, seeds=args.seeds, protocol=args.protocol,
                          gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                          pretrained=args.pretrained)


def _cmd_list() -> int:
    from fer_tune.search.space import available_spaces, load_search_space

    for name in available_spaces():
        space = load_search_space(name)
        explored = ", ".join(
            f"{p.name} {list(p.values)}" if p.kind == "choice" else f"{p.name} {p.kind}[{p.low:g}, {p.high:g}]"
            for p in space.params
        )
        base = f"base {space.base}" if space.base else "from scratch"
        print(f"{name:24s} {space.model} ({base}); {space.budget.num_trials} trials x {space.budget.max_epochs} epochs\n"
              f"{'':24s} {space.description}\n{'':24s} explores: {explored}")
    return 0


def _cmd_train(argv: list[str]) -> int:
    import time

    from fer_tune.training.config import TrainConfig, load_train_config, smoke_train_overrides, with_own_schedule
    from fer_tune.training.single_run import run_training

    args = _train_parser().parse_args(argv)
    if args.name is not None:
        check_run_name(args.name)
    from fer_tune.training.engine import pick_device

    pick_device(args.device)
    config = load_train_config(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in vars(args).items()
                 if k in TrainConfig.__dataclass_fields__ and v is not None}
    if args.base_checkpoint:
        overrides["base_checkpoint"] = args.base_checkpoint
    if "scheduler" not in overrides:
        overrides = with_own_schedule(overrides)
    if args.smoke:
        overrides = {**smoke_train_overrides(config.replace(**overrides)), **overrides}
    config = config.replace(source=args.config or "command line", **overrides)
    data = _load_data(args.data, args.smoke)
    name = args.name or f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_training(config, data, Path(args.results) / "train" / name, device=args.device)
    return 0


def _cmd_evaluate(argv: list[str]) -> int:
    from fer_tune.data.fer2013 import load_fer
    from fer_tune.training.evaluate import evaluate_checkpoint
    from fer_tune.reporting.plots import plot_confusion
    from fer_tune import EMOTIONS

    args = _evaluate_parser().parse_args(argv)
    from fer_tune.training.engine import pick_device

    pick_device(args.device)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; --out names a folder for the confusion-matrix PNG")
    data = load_fer(args.data)
    split = args.split or data.roles.get("test")
    if split is None:
        raise UserError(f"{args.data}: this layout has no labelled test split; pass --split with one of {', '.join(data.split_names)}")
    result = evaluate_checkpoint(args.checkpoint, data, split, args.device)
    for label, s in (("ten-crop", result.ten_crop), ("single-crop", result.single_crop)):
        print(f"{split} ({s.count} images) {label}: accuracy {s.accuracy:.4f}  macro precision "
              f"{s.macro_precision:.4f}  recall {s.macro_recall:.4f}  F1 (mean of per-class F1) {s.macro_f1:.4f}  "
              f"F1 of macro P and R {s.f1_of_macro_pr:.4f}")
    s = result.ten_crop
    print("per class (ten-crop):  " + "  ".join(
        f"{e} P{p:.2f}/R{r:.2f}/F{f:.2f}" for e, p, r, f in zip(EMOTIONS, s.per_class_precision,
                                                           s.per_class_recall, s.per_class_f1)))
    png = plot_confusion(s.confusion, out / f"confusion_{split}.png",
                         f"{Path(args.checkpoint).name} on {split} (ten-crop, row-normalised)")
    print(f"confusion matrix: {png}")
    return 0


def _cmd_predict(argv: list[str]) -> int:
    from fer_tune.training.engine import pick_device
    from fer_tune.deploy.predict import PredictOptions, run_predict

    args = _predict_parser().parse_args(argv)
    check_numbers(args, PREDICT_NUMBERS)
    pick_device(args.device)
    run_predict(PredictOptions(
        checkpoint=Path(args.checkpoint), paths=[Path(p) for p in args.paths], out=Path(args.out),
        annotate=Path(args.annotate) if args.annotate else None, detect=not args.no_detect, crops=args.crops,
        batch_size=args.batch_size, every=args.every, min_face=args.min_face, device=args.device))
    return 0


def _cmd_export(argv: list[str]) -> int:
    from fer_tune.deploy.export import ParityError, export_checkpoint

    args = _export_parser().parse_args(argv)
    try:
        export_checkpoint(Path(args.checkpoint), args.format, Path(args.out) if args.out else None, args.crops,
                          args.data)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_data(argv: list[str]) -> int:
    from fer_tune.data.fer2013 import load_fer
    from fer_tune.data.describe import describe

    p = Parser(prog="launch.py data", description="Describe a FER2013 data file.")
    p.add_argument("path")
    args = p.parse_args(argv)
    print(describe(load_fer(args.path)), end="")
    return 0


def _cmd_demo(argv: list[str]) -> int:
    from fer_tune.data.demo import DemoSpec, write_demo_csv

    p = Parser(prog="launch.py demo-data", description="Write the built-in demo faces as a FER2013-format CSV.")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=160, help="Training rows per class")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    spec = DemoSpec(train_per_class=args.per_class, val_per_class=max(1, args.per_class // 4),
                    test_per_class=max(1, args.per_class // 4), seed=args.seed)
    print(f"wrote {write_demo_csv(args.out, spec)} (demo faces, not FER2013)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
