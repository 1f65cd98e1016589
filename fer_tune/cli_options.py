"""Every command's options and the checks of their numbers (one ``error:`` line, exit 2, before anything starts)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fer_tune.errors import UserError
from fer_tune.rules import Rule, check_fields, whole
from fer_tune.search.space import AUTO, RANGES
from fer_tune.training.config import SEED


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one ``error:`` line (exit 2) like every other user mistake."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}; see {self.prog} --help")


# every number the search command takes: (what is allowed, the check), the YAML's rule where the
# option overrides a YAML setting; None = not given


SEARCH_NUMBERS = {
    "trials": RANGES["num_trials"],
    **{
        name: RANGES[name]
        for name in ("max_epochs", "max_concurrent", "gpus_per_trial", "cpus_per_trial", "top_k", "seeds")
    },
    "seed": SEED,
}


def number_or_auto(kind: type, example: str) -> Callable[[str], float | int | str]:
    """An argparse type: ``auto``, or a ``kind`` number (the message shows ``example``)."""

    def parse(text: str) -> float | int | str:
        if text == AUTO:
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value: {text!r} ({example}, or auto)") from None

    return parse


concurrency = number_or_auto(int, "a whole number such as 8")  # --max-concurrent
gpu_share = number_or_auto(float, "a number such as 0.5")  # --gpus-per-trial


def check_numbers(args: argparse.Namespace, rules: dict) -> None:
    """One :class:`UserError` for the first option outside its range (before anything starts)."""
    given = {dest: rule for dest, rule in rules.items() if getattr(args, dest, None) is not None}
    check_fields(given, args, lambda dest, value: f"--{dest.replace('_', '-')} {value!r}")


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


def search_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py", description=SEARCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search", metavar="NAME", help="search space to run: a name from --list or a .yaml path")
    p.add_argument("--list", action="store_true", help="list the search spaces and what each explores")
    p.add_argument("--data", metavar="PATH", help="fer2013.csv (or another layout; see `launch.py data`)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny budgets on the built-in demo data (or --data), CPU only: checks the whole path",
    )
    p.add_argument("--trials", type=int, metavar="N", help="number of trials (default: the YAML's)")
    p.add_argument("--max-epochs", type=int, metavar="N", help="epochs of a trial ASHA never stops")
    p.add_argument(
        "--gpus-per-trial",
        type=gpu_share,
        metavar="F",
        help="GPU share per trial, e.g. 0.5; auto: as many trials per GPU as fit (a probe measures one)",
    )
    p.add_argument("--cpus-per-trial", type=float, metavar="N", help="CPUs per trial")
    p.add_argument(
        "--max-concurrent",
        type=concurrency,
        metavar="N",
        help="trials at once (default: the YAML's, auto: as many as the cluster places, at most a quarter of --trials)",
    )
    p.add_argument(
        "--storage",
        metavar="URI",
        help="where Ray Tune keeps trials and checkpoints: a folder every node mounts at the same path, or a "
        "pyarrow URI (s3://bucket/prefix, gs://...); default: the search folder (one machine)",
    )
    p.add_argument(
        "--allow-failed-trials",
        action="store_true",
        help="trials that ended in error do not stop the retraining (default: exit 3 after the search)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler and the base training")
    p.add_argument("--name", help="results folder name under --results (default: the search name)")
    p.add_argument("--results", default="results", metavar="DIR", help="where results go (default: results/)")
    p.add_argument(
        "--base-checkpoint",
        metavar="PATH",
        help="weights to transfer from (default: results/<base>/best_model.pt, else the base is trained first)",
    )
    p.add_argument(
        "--pretrained",
        metavar="DIR",
        help="ViT: a local folder of pretrained weights (a copy of google/vit-large-patch32-224-in21k "
        "saved with save_pretrained), shipped to every trial; 'from_scratch' for random weights",
    )
    p.add_argument(
        "--retrain",
        metavar="NAME",
        help="retrain the winners of the finished search results/NAME and score them on PrivateTest",
    )
    p.add_argument("--no-retrain", action="store_true", help="stop after the search (no retraining, no report)")
    p.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="configurations to retrain (default 3; the YAML's smoke.retrain with --smoke)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="seeds per configuration (default 3; the YAML's smoke.retrain with --smoke)",
    )
    p.add_argument(
        "--protocol",
        default="paper",
        choices=["paper", "trainval"],
        help="paper: train on Training, select on PublicTest; trainval: then refit on Training + PublicTest",
    )
    p.add_argument(
        "--report", action="store_true", help="gather every scored search under --results into leaderboard.md"
    )
    p.add_argument(
        "--analyze",
        metavar="NAME",
        help="what the finished search results/NAME learned: importances, factor tables, plots -> analysis.md",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fresh", action="store_true", help="discard an earlier search of this name and start over")
    g.add_argument("--resume", action="store_true", help="continue an earlier search (an error if there is none)")
    return p


def train_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py train", description="Train one configuration and keep its best checkpoint.")
    p.add_argument("--config", metavar="YAML", help="a config such as results/<name>/best_config.yaml")
    p.add_argument("--data", metavar="PATH", help="fer2013.csv (required unless --smoke)")
    p.add_argument("--smoke", action="store_true", help="demo data and a tiny budget: checks a config in seconds")
    p.add_argument(
        "--model", help="vgg, vgg_spinal, vgg_progressive_spinal, effnetv2s, effnetv2s_spinal, vit_l32, vit_l32_spinal"
    )
    for name, kind in (
        ("epochs", int),
        ("batch-size", int),
        ("lr", float),
        ("weight-decay", float),
        ("momentum", float),
        ("width", float),
        ("seed", int),
    ):
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
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in this folder (results/train/<run>) from its last.pt, with its own config, on the "
        "data it recorded (or --data, the same file elsewhere); takes only --data and --device",
    )
    return p


RESUME_TAKES = ("resume", "data", "device", "results")  # what `train --resume` accepts: the run brings the rest


def evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(prog="launch.py evaluate", description="Score a checkpoint on one split.")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--data", required=True, metavar="PATH")
    p.add_argument("--split", default=None, help="split name (default: the test split, PrivateTest)")
    p.add_argument("--out", metavar="DIR", help="where the confusion-matrix PNG goes (default: beside the checkpoint)")
    p.add_argument("--device")
    return p


def predict_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="launch.py predict",
        description="Find faces in images, folders or videos and classify their "
        "expressions with a trained checkpoint; writes one CSV row per face.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="an image, a folder of images, or a video file")
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PT",
        help="e.g. results/<name>/best_model.pt or winners/*.pt, or an .onnx file `export` wrote",
    )
    p.add_argument(
        "--out",
        default="results/predict/predictions.csv",
        metavar="CSV",
        help="the CSV to write (default: results/predict/predictions.csv)",
    )
    p.add_argument("--annotate", metavar="DIR", help="also write copies of the images with boxes and labels drawn")
    p.add_argument(
        "--no-detect",
        action="store_true",
        help="take every image whole as a face crop (images of at most 64x64 pixels always are)",
    )
    p.add_argument(
        "--crops",
        choices=["ten", "single"],
        help="evaluation views: ten 40x40 crops averaged (as scored; the default), or the centre crop; "
        "ViT has one view; an .onnx file has its views inside",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="faces per batch on the device")
    p.add_argument("--every", type=int, default=1, metavar="N", help="videos: classify every N-th frame")
    p.add_argument("--min-face", type=int, default=32, metavar="PX", help="smallest face the detector looks for")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    return p


DEMO_NUMBERS = {"per_class": whole(1, 10_000), "seed": SEED}  # launch.py demo-data

PREDICT_NUMBERS = {
    "batch_size": whole(1, 4096),
    "every": Rule("a whole number 1 or more", lambda v: v >= 1),
    "min_face": whole(8, 4096),
}


def export_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="launch.py export",
        description="Export a checkpoint as a self-contained model file and "
        "check that it computes what PyTorch computes.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "pt2"],
        help="onnx (ONNX Runtime, default) or pt2 (torch.export, the successor of TorchScript)",
    )
    p.add_argument("--out", metavar="FILE", help="default: beside the checkpoint, same name, .onnx / .pt2")
    p.add_argument(
        "--crops",
        default="ten",
        choices=["ten", "single"],
        help="views inside the graph: ten 40x40 crops averaged (as scored), or the centre crop",
    )
    p.add_argument("--data", metavar="PATH", help="real faces for the parity check (default: the built-in demo faces)")
    return p
