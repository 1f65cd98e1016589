"""Command line: ``python launch.py --search NAME`` and the ``train`` / ``evaluate`` / ``predict`` / ``export`` /
``data`` commands.

Every user mistake ends as one ``error:`` line naming the file / row / key and the fix, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fer_tune.cli_options import (
    DEMO_NUMBERS,
    PREDICT_NUMBERS,
    RESUME_TAKES,
    SEARCH_NUMBERS,
    Parser,
    check_numbers,
    evaluate_parser,
    export_parser,
    predict_parser,
    search_parser,
    train_parser,
)
from fer_tune.console import configure_console
from fer_tune.errors import Interrupted, UserError, exit_status, stopped_by_disk
from fer_tune.files import check_creatable, check_working_folder
from fer_tune.run_folder import check_run_name, folder_lock, train_folder
from fer_tune.sigterm import sigterm_as_ctrl_c

log = logging.getLogger(__name__)

COMMANDS = ("train", "evaluate", "predict", "export", "data", "demo-data")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``launch.py`` and the ``fer-tune`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_console()

    def run() -> int:
        check_working_folder()
        with sigterm_as_ctrl_c():  # a scheduler's stop is a Ctrl-C: the same command continues
            return _dispatch(argv)

    return exit_status(run)


def _dispatch(argv: list[str]) -> int:
    """Run the command ``argv`` names (a search when it names none)."""
    if not argv or argv[0] not in COMMANDS:
        return _cmd_search(argv)
    command = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "predict": _cmd_predict,
        "export": _cmd_export,
        "data": _cmd_data,
        "demo-data": _cmd_demo,
    }[argv[0]]
    try:
        return command(argv[1:])
    except Interrupted:
        raise
    except KeyboardInterrupt:  # a short command keeps no state: it is run again
        raise Interrupted(f"{argv[0]} stopped before it finished: run the same command again") from None


def _cmd_search(argv: list[str]) -> int:
    from fer_tune.data.fer2013 import load_run_data

    args = search_parser().parse_args(argv)
    check_numbers(args, SEARCH_NUMBERS)
    for option in ("name", "retrain", "analyze"):
        if getattr(args, option) is not None:
            check_run_name(getattr(args, option), f"--{option}")
    if args.list:
        return _cmd_list()
    results = check_creatable(args.results, "--results")  # every command below writes there
    for option in ("retrain", "analyze"):
        if getattr(args, option) is not None and (results / getattr(args, option)).is_dir():
            check_creatable(results / getattr(args, option), "--results")  # it writes into that folder
    if args.report:
        from fer_tune.reporting.leaderboard import write_leaderboard

        log.info(f"leaderboard: {write_leaderboard(Path(args.results))}")
        return 0
    if args.analyze:
        folder = Path(args.results) / args.analyze
        if not folder.is_dir():
            raise UserError(f"{folder}: no such search folder; run --search first (or give --results)")
        from fer_tune.reporting.analysis import analyze

        analyze(folder)
        return 0
    if args.retrain or args.search:  # an unreachable cluster: before any data is read or folder made
        from fer_tune.search.ray_setup import check_head_answers, ray_address

        check_head_answers(ray_address())
    from fer_tune.pipeline import retrain_and_report, search_to_report

    if args.retrain:
        folder = Path(args.results) / args.retrain
        if not folder.is_dir():
            raise UserError(f"{folder}: no such search folder; run --search first (or give --results)")
        from fer_tune.run_folder import require_search_folder

        require_search_folder(folder)  # before any data is read
        retrain_and_report(folder, load_run_data(args.data, args.smoke), _retrain_options(args))
        return 0
    if not args.search:
        search_parser().print_help()
        return 2
    from fer_tune.models import check_pretrained_choice
    from fer_tune.search.run import SearchOptions
    from fer_tune.search.space_file import load_search_space

    space = load_search_space(args.search)  # a broken YAML fails before any data is read
    check_pretrained_choice(space.model, args.pretrained or space.fixed.get("pretrained_path"), space.path)
    data = load_run_data(args.data, args.smoke)
    opts = SearchOptions(
        results_dir=Path(args.results),
        name=args.name,
        trials=args.trials,
        max_epochs=args.max_epochs,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        seed=args.seed,
        fresh=args.fresh,
        resume=args.resume,
        smoke=args.smoke,
        base_checkpoint=args.base_checkpoint,
        pretrained=args.pretrained,
        storage=args.storage,
        max_concurrent=args.max_concurrent,
        allow_failed_trials=args.allow_failed_trials,
    )
    search_to_report(args.search, data, opts, None if args.no_retrain else _retrain_options(args))
    return 0


def _retrain_options(args: argparse.Namespace):
    """The retraining's options from the command line (None = the search space's own)."""
    from fer_tune.search.retrain_plan import RetrainOptions

    return RetrainOptions(
        top_k=args.top_k,
        seeds=args.seeds,
        protocol=args.protocol,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        pretrained=args.pretrained,
        allow_failed_trials=args.allow_failed_trials,
    )


def _cmd_list() -> int:
    from fer_tune.search.space_file import available_spaces, load_search_space

    for name in available_spaces():
        space = load_search_space(name)
        explored = ", ".join(
            f"{p.name} {list(p.values)}" if p.kind == "choice" else f"{p.name} {p.kind}[{p.low:g}, {p.high:g}]"
            for p in space.params
        )
        base = f"base {space.base}" if space.base else "from scratch"
        log.info(
            f"{name:24s} {space.model} ({base}); {space.budget.num_trials} trials x {space.budget.max_epochs} epochs\n"
            f"{'':24s} {space.description}\n{'':24s} explores: {explored}"
        )
    return 0


def _cmd_train(argv: list[str]) -> int:
    import time

    from fer_tune.data.fer2013 import load_run_data
    from fer_tune.training.config import TrainConfig, check_train_options, load_train_config, train_overrides
    from fer_tune.training.device import pick_device
    from fer_tune.training.single_run import how_to_continue, run_training

    args = train_parser().parse_args(argv)
    if args.resume:
        return _cmd_train_resume(args)
    if args.name is not None:
        check_run_name(args.name)
    pick_device(args.device)
    config = load_train_config(args.config) if args.config else TrainConfig()
    config = config.replace(source=args.config or "command line", **train_overrides(config, vars(args)))
    check_train_options(config, vars(args))
    check_creatable(args.results, "--results")
    out_dir = Path(args.results) / "train" / (args.name or f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        with train_folder(out_dir):  # checked and locked before the data are read
            run_training(config, load_run_data(args.data, args.smoke), out_dir, device=args.device)
    except KeyboardInterrupt:
        raise Interrupted(how_to_continue(out_dir)) from None
    except Exception as exc:
        stopped_by_disk(exc, how_to_continue(out_dir))
        raise
    return 0


def _cmd_train_resume(args: argparse.Namespace) -> int:
    from fer_tune.data.fer2013 import load_run_data
    from fer_tune.training import single_run as run
    from fer_tune.training.device import pick_device

    extra = [k for k, v in vars(args).items() if k not in RESUME_TAKES and v not in (None, False)]
    if extra:
        raise UserError(
            f"--resume continues a run with its own config.yaml, so it takes only --data and --device: drop "
            f"{', '.join('--' + k.replace('_', '-') for k in extra)}, or start a new run without --resume"
        )
    pick_device(args.device)
    folder = Path(args.resume)
    try:
        with folder_lock(run.resumable_folder(folder), "train run"):
            config, state = run.resumable_run(folder)  # before the data are read
            data = load_run_data(args.data or run.recorded_data(state, folder), False)
            run.resume_training(folder, config, state, data, device=args.device)
    except KeyboardInterrupt:
        raise Interrupted(run.how_to_continue(folder)) from None
    except Exception as exc:
        stopped_by_disk(exc, run.how_to_continue(folder))
        raise
    return 0


def _cmd_evaluate(argv: list[str]) -> int:
    from fer_tune import EMOTIONS
    from fer_tune.data.fer2013 import load_fer
    from fer_tune.reporting.plots import plot_confusion
    from fer_tune.training.evaluate import evaluate_checkpoint

    args = evaluate_parser().parse_args(argv)
    from fer_tune.training.device import pick_device

    pick_device(args.device)
    out = check_creatable(Path(args.out) if args.out else Path(args.checkpoint).parent, "--out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; --out names a folder for the confusion-matrix PNG")
    data = load_fer(args.data)
    split = args.split or data.roles.get("test")
    if split is None:
        raise UserError(
            f"{args.data}: this layout has no labelled test split; "
            f"pass --split with one of {', '.join(data.split_names)}"
        )
    result = evaluate_checkpoint(args.checkpoint, data, split, args.device)
    for label, s in (("ten-crop", result.ten_crop), ("single-crop", result.single_crop)):
        log.info(
            f"{split} ({s.count} images) {label}: accuracy {s.accuracy:.4f}  macro precision "
            f"{s.macro_precision:.4f}  recall {s.macro_recall:.4f}  F1 (mean of per-class F1) {s.macro_f1:.4f}  "
            f"F1 of macro P and R {s.f1_of_macro_pr:.4f}"
        )
    s = result.ten_crop
    log.info(
        "per class (ten-crop):  "
        + "  ".join(
            f"{e} P{p:.2f}/R{r:.2f}/F{f:.2f}"
            for e, p, r, f in zip(EMOTIONS, s.per_class_precision, s.per_class_recall, s.per_class_f1)
        )
    )
    png = plot_confusion(
        s.confusion,
        out / f"confusion_{split}.png",
        f"{Path(args.checkpoint).name} on {split} (ten-crop, row-normalised)",
    )
    log.info(f"confusion matrix: {png}")
    return 0


def _cmd_predict(argv: list[str]) -> int:
    from fer_tune.deploy.predict import PredictOptions, run_predict
    from fer_tune.training.device import pick_device

    args = predict_parser().parse_args(argv)
    check_numbers(args, PREDICT_NUMBERS)
    pick_device(args.device)
    run_predict(
        PredictOptions(
            checkpoint=Path(args.checkpoint),
            paths=[Path(p) for p in args.paths],
            out=Path(args.out),
            annotate=Path(args.annotate) if args.annotate else None,
            detect=not args.no_detect,
            crops=args.crops,
            batch_size=args.batch_size,
            every=args.every,
            min_face=args.min_face,
            device=args.device,
        )
    )
    return 0


def _cmd_export(argv: list[str]) -> int:
    from fer_tune.deploy.export import ParityError, export_checkpoint

    args = export_parser().parse_args(argv)
    try:
        export_checkpoint(
            Path(args.checkpoint), args.format, Path(args.out) if args.out else None, args.crops, args.data
        )
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_data(argv: list[str]) -> int:
    from fer_tune.data.describe import describe
    from fer_tune.data.fer2013 import load_fer

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
    check_numbers(args, DEMO_NUMBERS)
    out = Path(args.out)
    if out.exists() or out.is_symlink():  # never replace a file fer-tune did not write
        raise UserError(f"{out}: already exists; demo-data writes only a new file: remove it or give another path")
    check_creatable(out, "demo-data")
    spec = DemoSpec(
        train_per_class=args.per_class,
        val_per_class=max(1, args.per_class // 4),
        test_per_class=max(1, args.per_class // 4),
        seed=args.seed,
    )
    log.info(f"wrote {write_demo_csv(args.out, spec)} (demo faces, not FER2013)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
