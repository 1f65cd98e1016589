"""One device check: what a fer-tune trial costs on this machine's accelerator, in one run of at most ~5 minutes.

    python bench/device_kit.py device_kit                                  # here: pack what the device lacks
    PYTHONPATH=device_kit/site:. python bench/gpu_check.py --data device_kit/data/fer2013-train-public.npz.xz \\
        --out $OUT/gpu_check                                               # there (carry device_kit)
    python bench/gpu_check.py --tiny                                       # CPU, ~20 s: the script works

Plain torch only (no Ray, no Optuna: the GPU machine has neither). Sections, in order (``--only NAME``
reruns one); ``gpu_check.json`` and ``gpu_check.md`` are rewritten after each, so a failure or a
timeout keeps what was measured:

1. ``throughput``: training images/s and the epoch it implies on 28,709 images (the paper's ten-crop
   recipe) per model, fp32 vs bf16 + channels-last, ``torch.compile`` on vs off (compile time apart),
   SGD-Nesterov and the Ranger / Ranger21 rows; PublicTest ten-crop evaluation time;
2. ``augmentation``: the batched on-device augmentation vs the per-image torchvision pipeline in a
   DataLoader with one worker per core, feeding the same model on the same device;
3. ``share_probe``: what ``gpus_per_trial: auto`` measures: one batch of the real recipe's largest
   batch, its peak memory and the trials per GPU that follow;
4. ``packing``: k plain processes training VGG on the one device at once (what Ray's fractional GPUs
   amount to), timed after a common start barrier: trial-epochs per hour and peak memory per trial;
5. ``learning``: the paper's VGGNet recipe at full width on the data for a fixed wall-clock budget:
   PublicTest ten-crop accuracy and time per epoch.

Checkpoint bytes are a CPU measurement (``bench/bench_checkpoint.py``), not device time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_data import PerImageDataset  # noqa: E402

from fer_tune.files import write_text_atomic  # noqa: E402
from fer_tune.search.runner import trials_per_gpu  # noqa: E402
from fer_tune.search.space import paper_point
from fer_tune.search.space_file import load_search_space
from fer_tune.training.config import TrainConfig  # noqa: E402
from fer_tune.training.engine import Trainer  # noqa: E402

TRAINING_IMAGES = 28_709  # FER2013 Training
PUBLIC_TEST = 3_589
SECTIONS = ("throughput", "augmentation", "share_probe", "packing", "learning")
TARGETS = {"vgg_epoch_s": 10.0, "augmentation_ratio": 5.0, "packing_vs_one": 3.0}


@dataclass(frozen=True)
class Plan:
    """How big each measurement is."""

    models: tuple[tuple[str, float, int], ...]  # (model, width, training steps measured)
    optimizer_rows: tuple[tuple[str, str], ...]  # (model, optimizer) measured in bf16 besides SGD
    batch: int
    eval_images: int
    packing: tuple[int, ...]
    packing_images: int
    compile_models: tuple[str, ...]
    loader_steps: int
    learning_width: float
    learning_s: float  # at most this long (less when the deadline comes first)
    deadline_s: float  # the whole check


FULL = Plan(
    models=(("vgg", 1.0, 200), ("vgg_spinal", 1.0, 200), ("effnetv2s", 1.0, 100), ("vit_l32", 1.0, 20)),
    optimizer_rows=(
        ("vgg_spinal", "ranger"),
        ("vgg_spinal", "ranger21"),
        ("effnetv2s", "ranger"),
        ("effnetv2s", "ranger21"),
    ),
    batch=64,
    eval_images=PUBLIC_TEST,
    packing=(1, 2, 4, 8),
    packing_images=4096,
    compile_models=("vgg",),
    loader_steps=60,
    learning_width=1.0,
    learning_s=240.0,
    deadline_s=285.0,
)
TINY = Plan(
    models=(("vgg", 0.0625, 3), ("vgg_spinal", 0.0625, 3)),
    optimizer_rows=(("vgg_spinal", "ranger"), ("vgg_spinal", "ranger21")),
    batch=8,
    eval_images=32,
    packing=(1, 2),
    packing_images=32,
    compile_models=(),
    loader_steps=3,
    learning_width=0.0625,
    learning_s=1.0,
    deadline_s=120.0,
)


@dataclass
class Report:
    card: str
    device: str
    data: str
    torch: str
    tiny: bool
    throughput: list[dict] = field(default_factory=list)
    augmentation: dict = field(default_factory=dict)
    share_probe: dict = field(default_factory=dict)
    packing: list[dict] = field(default_factory=list)
    learning: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None


def load_data(args: argparse.Namespace, plan: Plan) -> tuple[tuple, tuple, str]:
    """(train, val, where from): the file's train / validation roles, or random faces of that size."""
    if args.data:
        from fer_tune.data.fer2013 import load_fer

        data = load_fer(args.data)
        (tx, ty), (vx, vy) = data.role("train"), data.role("val")
        return (tx, ty), (vx, vy), f"{args.data} (train: {data.roles['train']}, validation: {data.roles['val']})"
    rng = np.random.default_rng(0)
    count = TRAINING_IMAGES if not args.tiny else max(plan.packing_images, plan.batch * 8)
    images = rng.integers(0, 256, (count + plan.eval_images, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, count + plan.eval_images)
    return (
        (images[:count], labels[:count]),
        (images[count:], labels[count:]),
        "random 48x48 images of FER2013's shape (timings only: the learning section means nothing on them)",
    )


def train_config(model: str, width: float, batch: int, fast: bool, optimizer: str = "sgd_nesterov") -> TrainConfig:
    extra = {"pretrained_path": "from_scratch"} if model.startswith("vit") else {}
    return TrainConfig(
        model=model,
        width=width,
        batch_size=batch,
        epochs=1,
        amp=fast,
        channels_last=fast,
        optimizer=optimizer,
        scheduler="none",
        **extra,
    )


def measure_throughput(
    model: str,
    width: float,
    steps: int,
    fast: bool,
    compiled: bool,
    optimizer: str,
    train,
    val,
    plan: Plan,
    device: torch.device,
) -> dict:
    """Training images/s over ``steps`` batches (after one warm-up batch), and evaluation seconds."""
    n = steps * plan.batch
    config = train_config(model, width, plan.batch, fast, optimizer)
    trainer = Trainer(
        config, (train[0][:n], train[1][:n]), (val[0][: plan.eval_images], val[1][: plan.eval_images]), device=device
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if compiled:
        trainer.model = torch.compile(trainer.model)
    started = time.perf_counter()
    trainer.train_one_epoch(max_batches=1)  # cuDNN autotuning, or torch.compile's compilation
    _sync(device)
    compile_s = time.perf_counter() - started if compiled else 0.0
    started = time.perf_counter()
    trainer.train_one_epoch(max_batches=steps)
    _sync(device)
    rate = n / (time.perf_counter() - started)
    trainer.validate()  # warm-up: the evaluation shapes are new
    started = time.perf_counter()
    trainer.validate()
    _sync(device)
    eval_s = time.perf_counter() - started
    precision = "bf16 + channels-last" if fast and device.type == "cuda" else "fp32"
    return {
        "model": model,
        "width": width,
        "optimizer": optimizer,
        "precision": precision,
        "compile": compiled,
        "images_per_s": round(rate, 1),
        "epoch_s": round(TRAINING_IMAGES / rate, 1),
        "eval_s_per_publictest": round(eval_s * PUBLIC_TEST / min(plan.eval_images, len(val[1])), 1),
        "compile_s": round(compile_s, 1),
        "peak_memory_gb": _peak_gb(device),
    }


def section_throughput(report: Report, train, val, plan: Plan, device: torch.device, say: Callable) -> None:
    on_cuda = device.type == "cuda"
    rows = []
    for model, width, steps in plan.models:
        for fast, compiled in ((False, False), (True, False), (True, True)) if on_cuda else ((False, False),):
            if not compiled or model in plan.compile_models:
                rows.append((model, width, steps, fast, compiled, "sgd_nesterov"))
    widths = {m: (w, s) for m, w, s in plan.models}
    rows += [(m, widths[m][0], widths[m][1], on_cuda, False, opt) for m, opt in plan.optimizer_rows]
    for model, width, steps, fast, compiled, optimizer in rows:
        try:
            row = measure_throughput(model, width, steps, fast, compiled, optimizer, train, val, plan, device)
        except Exception as exc:  # a model or compile that fails here is reported, not fatal
            report.notes.append(f"throughput {model} {optimizer} fast={fast} compile={compiled}: failed ({exc!s:.200})")
            continue
        report.throughput.append(row)
        say(
            f"{model} {optimizer} {row['precision']} compile={compiled}: {row['images_per_s']} images/s, "
            f"epoch {row['epoch_s']} s"
        )


def section_augmentation(report: Report, train, val, plan: Plan, device: torch.device, say: Callable) -> None:
    """Seconds for the same images: batched on-device augmentation vs a per-image DataLoader (one worker
    per core), the same VGG model and optimizer on the same device."""
    width = plan.models[0][1]
    n = plan.loader_steps * plan.batch
    trainer = Trainer(
        train_config("vgg", width, plan.batch, True),
        (train[0][:n], train[1][:n]),
        (val[0][:64], val[1][:64]),
        device=device,
    )
    trainer.train_one_epoch(max_batches=1)  # warm-up
    _sync(device)
    started = time.perf_counter()
    trainer.train_one_epoch()
    _sync(device)
    batched = time.perf_counter() - started
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(
        PerImageDataset(train[0][:n], train[1][:n]), batch_size=plan.batch, num_workers=workers
    )
    model, optimizer = trainer.model, trainer.optimizer
    started = time.perf_counter()
    for crops, labels in loader:
        inputs = crops.flatten(0, 1).to(device, non_blocking=True)
        targets = labels.repeat_interleave(10).to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    per_image = time.perf_counter() - started
    report.augmentation = {
        "images": n,
        "dataloader_workers": workers,
        "batched_s": round(batched, 2),
        "per_image_s": round(per_image, 2),
        "ratio": round(per_image / batched, 2),
        "epoch_s_batched": round(batched * TRAINING_IMAGES / n, 1),
        "epoch_s_per_image": round(per_image * TRAINING_IMAGES / n, 1),
    }
    say(f"augmentation: per-image / batched = {report.augmentation['ratio']}x")


def section_share_probe(report: Report, train, val, plan: Plan, device: torch.device, say: Callable) -> None:
    """``gpus_per_trial: auto`` as the search runs it: the vgg_spinal space's largest batch, one real batch."""
    config = load_search_space("vgg_spinal").largest_trial().replace(epochs=1, width=plan.models[0][1])
    batch = plan.batch if plan is TINY else config.batch_size
    config = config.replace(batch_size=batch)
    n = batch * 4
    trainer = Trainer(config, (train[0][:n], train[1][:n]), (val[0][:batch], val[1][:batch]), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train_one_epoch(max_batches=1)
    _sync(device)
    started = time.perf_counter()
    trainer.train_one_epoch(max_batches=3)
    _sync(device)
    step_s = (time.perf_counter() - started) / 3
    trainer.validate()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    k = trials_per_gpu(peak, total) if device.type == "cuda" else None
    report.share_probe = {
        "model": config.model,
        "batch": batch,
        "step_s": round(step_s, 4),
        "peak_memory_gb": _peak_gb(device),
        "device_memory_gb": round(total / 1e9, 1) or None,
        "trials_per_gpu": k,
    }
    say(
        f"share probe: batch {batch}, step {step_s * 1e3:.1f} ms, peak {report.share_probe['peak_memory_gb']} GB, "
        f"{k} trial(s) per GPU"
    )


def _packed_trial(images, labels, width: float, batch: int, device_name: str, threads: int, barrier, results) -> None:
    """One VGG trial-epoch over ``images`` in its own process, timed after every process is ready."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    trainer = Trainer(
        train_config("vgg", width, batch, True), (images, labels), (images[:batch], labels[:batch]), device=device
    )
    trainer.train_one_epoch(max_batches=1)  # warm-up outside the timing
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    barrier.wait()
    started = time.time()
    trainer.train_one_epoch()
    _sync(device)
    results.put({"started": started, "ended": time.time(), "peak_memory_gb": _peak_gb(device)})


def section_packing(report: Report, train, val, plan: Plan, device: torch.device, say: Callable) -> None:
    """k trials at once as k processes on the one device: aggregate trial-epochs per hour."""
    context = mp.get_context("forkserver")  # each trial forks from one process that imported torch once
    context.set_forkserver_preload(["__main__", "torch", "fer_tune.training.engine"])
    n = plan.packing_images
    images, labels = np.ascontiguousarray(train[0][:n]), np.ascontiguousarray(train[1][:n])
    for k in plan.packing:
        barrier, results = context.Barrier(k), context.Queue()
        threads = max(1, (os.cpu_count() or 1) // k)
        workers = [
            context.Process(
                target=_packed_trial,
                args=(images, labels, plan.models[0][1], plan.batch, device.type, threads, barrier, results),
            )
            for _ in range(k)
        ]
        for worker in workers:
            worker.start()
        rows = [results.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
        wall = max(r["ended"] for r in rows) - min(r["started"] for r in rows)
        peaks = [r["peak_memory_gb"] for r in rows if r["peak_memory_gb"] is not None]
        report.packing.append(
            {
                "trials": k,
                "wall_s": round(wall, 2),
                "trial_epochs_per_hour": round(k * n / TRAINING_IMAGES * 3600 / wall, 1),
                "peak_memory_gb_per_trial": max(peaks) if peaks else None,
            }
        )
        base = report.packing[0]["trial_epochs_per_hour"]
        for row in report.packing:
            row["vs_one_trial"] = round(row["trial_epochs_per_hour"] / base, 2)
        say(f"packing: {k} trial(s) at once, {report.packing[-1]['vs_one_trial']}x one trial's trial-epochs per hour")


def section_learning(
    report: Report, train, val, plan: Plan, device: torch.device, say: Callable, budget_s: float
) -> None:
    """The vgg space's paper trial (the public VGGNet recipe) at full width until ``budget_s`` runs out:
    validation ten-crop accuracy and seconds per epoch."""
    space = load_search_space("vgg")
    config = space.train_config(paper_point(space), epochs=300).replace(width=plan.learning_width)
    trainer = Trainer(config, train, val, device=device)
    started = time.perf_counter()
    epochs = []
    while not epochs or time.perf_counter() - started + epochs[-1]["epoch_s"] <= budget_s:
        result = trainer.step_epoch()
        epochs.append(
            {
                "epoch": result.epoch,
                "val_acc": round(result.val_acc, 4),
                "train_acc": round(result.train_acc, 4),
                "epoch_s": round(result.epoch_time, 2),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
        )
        report.learning = {
            "model": config.model,
            "width": config.width,
            "recipe": {k: getattr(config, k) for k in ("optimizer", "scheduler", "lr", "weight_decay", "batch_size")},
            "budget_s": round(budget_s),
            "metric": "validation ten-crop accuracy",
            "epochs": epochs,
        }
        say(f"learning: epoch {result.epoch}, validation ten-crop {result.val_acc:.4f}, {result.epoch_time:.1f} s")
        if result.diverged:
            break


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    """A Markdown table (the GPU machine has pandas but not tabulate, which ``to_markdown`` needs)."""
    cell = lambda v: "-" if v is None else ("on" if v is True else "off" if v is False else str(v))  # noqa: E731
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows
    ]


def markdown(report: Report) -> str:
    """The report as Markdown tables, with the targets beside the figures."""
    lines = [
        f"# fer-tune device check: {report.card}",
        "",
        f"device {report.device}; torch {report.torch}; data: {report.data}"
        f"{'; --tiny (CPU check of the script, not a benchmark)' if report.tiny else ''}",
        "",
    ]
    if report.throughput:
        lines += [
            "## Training throughput (epoch = 28,709 training images, ten-crop training, at the measured rate; "
            "evaluation: PublicTest ten-crop)",
            "",
        ]
        lines += _table(
            report.throughput,
            [
                "model",
                "width",
                "optimizer",
                "precision",
                "compile",
                "images_per_s",
                "epoch_s",
                "eval_s_per_publictest",
                "compile_s",
                "peak_memory_gb",
            ],
        )
    if report.augmentation:
        lines += ["", "## Batched on-device augmentation vs per-image DataLoader (same model, same device)", ""]
        lines += _table([report.augmentation], list(report.augmentation))
    if report.share_probe:
        lines += ["", "## gpus_per_trial: auto (one batch of the real recipe)", ""]
        lines += _table([report.share_probe], list(report.share_probe))
    if report.packing:
        lines += ["", "## VGG trials sharing one device (k processes, common start)", ""]
        lines += _table(
            report.packing, ["trials", "wall_s", "trial_epochs_per_hour", "vs_one_trial", "peak_memory_gb_per_trial"]
        )
    if report.learning:
        lines += [
            "",
            f"## Learning: {report.learning['model']} width {report.learning['width']}, "
            f"{report.learning['recipe']}, {report.learning['budget_s']} s budget; "
            f"{report.learning['metric']} on the validation split of {report.data}",
            "",
        ]
        lines += _table(report.learning["epochs"], ["epoch", "train_acc", "val_acc", "epoch_s", "elapsed_s"])
    lines += ["", "## Against the targets", ""] + [f"- {line}" for line in against_targets(report)]
    lines += [""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def against_targets(report: Report) -> list[str]:
    """Each target beside its measured figure ('not measured' where the section did not run)."""
    vgg = [r["epoch_s"] for r in report.throughput if r["model"] == "vgg" and r["optimizer"] == "sgd_nesterov"]
    aug, pack = report.augmentation.get("ratio"), [r["vs_one_trial"] for r in report.packing]
    best = max((e["val_acc"] for e in report.learning.get("epochs", [])), default=None)
    return [
        f"VGGNet epoch <= {TARGETS['vgg_epoch_s']} s: {min(vgg) if vgg else 'not measured'} s (fastest variant)",
        f"batched augmentation >= {TARGETS['augmentation_ratio']}x the per-image DataLoader: "
        f"{aug if aug is not None else 'not measured'}x",
        f"packing >= {TARGETS['packing_vs_one']}x one trial's trial-epochs per hour: "
        f"{max(pack) if pack else 'not measured'}x",
        f"validation ten-crop accuracy after the learning budget: {best if best is not None else 'not measured'}",
    ]


def write(report: Report, out: Path) -> None:
    write_text_atomic(out / "gpu_check.json", json.dumps(asdict(report), indent=2) + "\n")
    write_text_atomic(out / "gpu_check.md", markdown(report))


def run(args: argparse.Namespace) -> Report:
    """The sections of the plan in order (or ``--only`` one), the report rewritten after each."""
    plan = TINY if args.tiny else FULL
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    card = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    train, val, source = load_data(args, plan)
    report = Report(card, str(device), source, torch.__version__, args.tiny)
    if args.tiny:
        report.notes.append("--tiny: narrow models, a few steps on the CPU; these figures say nothing about a GPU")
    out = Path(args.out)

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f}s] {line}", flush=True)

    warnings.filterwarnings("ignore", message="This overload of addcmul_", category=UserWarning)  # pytorch-ranger's
    for name in [args.only] if args.only else SECTIONS:
        extra = (
            {"budget_s": min(plan.learning_s, plan.deadline_s - (time.perf_counter() - started))}
            if name == "learning"
            else {}
        )
        try:
            globals()[f"section_{name}"](report, train, val, plan, device, say, **extra)
        except Exception as exc:  # one section's failure keeps the others' figures
            report.notes.append(f"{name}: failed ({type(exc).__name__}: {exc!s:.300})")
            say(f"{name}: failed ({exc!s:.200})")
        write(report, out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a FER2013 file (the kit's compact file on the device); default: random faces")
    parser.add_argument("--tiny", action="store_true", help="CPU, a few steps: checks the script in about 20 s")
    parser.add_argument("--only", choices=SECTIONS, help="run one section")
    parser.add_argument("--out", default="bench/gpu_check", help="folder for gpu_check.md and gpu_check.json")
    args = parser.parse_args(argv)
    run(args)
    print(f"wrote {Path(args.out) / 'gpu_check.md'} and {Path(args.out) / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
