"""One device check: what a fer-tune trial costs on this machine's accelerator, in one run.

    python bench/gpu_check.py --data ../shared/data/fer2013.csv.xz     # on one GPU, at most ~8 minutes
    python bench/gpu_check.py --tiny                                    # CPU, under a minute: the script works

Writes ``<out>/gpu_check.md`` (Markdown tables) and ``<out>/gpu_check.json``, both naming the card:

1. training images/s and the epoch time it implies on 28,709 images (the paper's ten-crop recipe),
   per model, bf16 + channels-last vs fp32, and ``torch.compile`` on vs off (compile time apart);
   plus the PublicTest ten-crop evaluation time;
2. the batched on-device augmentation vs the per-image torchvision pipeline in a DataLoader with as
   many workers as the machine has cores, both feeding the same model on the same device: the
   epoch-time ratio;
3. 1, 2, 4 and 8 VGG trials sharing the device through Ray's fractional GPUs: aggregate
   trial-epochs per hour and peak memory per trial;
4. bytes per checkpoint, before and after lean checkpoints (frozen base tensors left out).

Without ``--data`` it trains on demo faces of FER2013's size (the timings do not depend on the
pictures). ``--tiny`` shrinks everything (narrow models, a few steps, 1-2 trials, no ViT, no
compile) so that the whole path runs on a CPU in under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_checkpoint import measure  # noqa: E402
from bench_data import PerImageDataset  # noqa: E402

from fer_tune.config import TrainConfig  # noqa: E402
from fer_tune.engine import Trainer  # noqa: E402
from fer_tune.files import write_text_atomic  # noqa: E402
from fer_tune.tune_runner import ray_session  # noqa: E402

TRAINING_IMAGES = 28_709  # FER2013 Training
EPOCH_NOTE = "epoch = 28,709 training images at the measured rate"


@dataclass
class Plan:
    """How big each measurement is."""

    models: tuple[tuple[str, float, int], ...]  # (model, width, training steps measured)
    batch: int
    eval_images: int
    packing: tuple[int, ...]
    packing_images: int
    compile: bool
    loader_steps: int


# ViT-L/32 takes fewer steps (each is ~30x a VGG step) and no compile, to stay within ~8 minutes
FULL = Plan(models=(("vgg", 1.0, 200), ("vgg_spinal", 1.0, 200), ("effnetv2s", 1.0, 100), ("vit_l32", 1.0, 20)),
            batch=64, eval_images=3589, packing=(1, 2, 4, 8), packing_images=4096, compile=True, loader_steps=100)
TINY = Plan(models=(("vgg", 0.0625, 3), ("vgg_spinal", 0.0625, 3)), batch=8, eval_images=32, packing=(1, 2),
            packing_images=32, compile=False, loader_steps=3)


@dataclass
class Report:
    card: str
    device: str
    data: str
    torch: str
    tiny: bool
    throughput: list[dict] = field(default_factory=list)
    augmentation: dict = field(default_factory=dict)
    packing: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_data(args: argparse.Namespace, plan: Plan) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str]:
    """(train, val, where from): the real file's Training / PublicTest, or demo faces of that size."""
    needed = max(max(m[2] for m in plan.models) * plan.batch, plan.packing_images, plan.loader_steps * plan.batch)
    if args.data:
        from fer_tune.data import load_fer

        data = load_fer(args.data)
        (tx, ty), (vx, vy) = data.role("train"), data.role("val")
        return (tx, ty), (vx[: plan.eval_images], vy[: plan.eval_images]), f"{args.data} (Training / PublicTest)"
    rng = np.random.default_rng(0)
    count = min(TRAINING_IMAGES, needed)
    images = rng.integers(0, 256, (count + plan.eval_images, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, count + plan.eval_images)
    return ((images[:count], labels[:count]), (images[count:], labels[count:]),
            "random 48x48 faces of FER2013's shape (timings do not depend on the pictures)")


def _config(model: str, width: float, batch: int, fast: bool) -> TrainConfig:
    extra = {"pretrained_path": "from_scratch"} if model.startswith("vit") else {}
    return TrainConfig(model=model, width=width, batch_size=batch, epochs=1, amp=fast, channels_last=fast,
                       optimizer="sgd_nesterov", scheduler="none", **extra)


def measure_throughput(model: str, width: float, steps: int, fast: bool, compiled: bool, train, val, plan: Plan,
                       device: torch.device) -> dict:
    """Training images/s over ``steps`` steps (after one warm-up step), and evaluation seconds."""
    n = steps * plan.batch
    trainer = Trainer(_config(model, width, plan.batch, fast), (train[0][:n], train[1][:n]), val, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    compile_s = 0.0
    if compiled:
        trainer.model = torch.compile(trainer.model)
    trainer.batches_per_epoch = 1
    started = time.perf_counter()
    trainer.train_one_epoch()  # one step: cuDNN autotuning, or torch.compile's compilation
    _sync(device)
    trainer.batches_per_epoch = steps
    if compiled:
        compile_s = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train_one_epoch()
    _sync(device)
    train_s = time.perf_counter() - started
    trainer.validate()  # warm-up: the evaluation shapes are new
    started = time.perf_counter()
    trainer.validate()
    _sync(device)
    eval_s = time.perf_counter() - started
    rate = n / train_s
    return {"model": model, "width": width, "precision": "bf16 + channels-last" if fast and device.type == "cuda" else "fp32",
            "compile": compiled, "images_per_s": round(rate, 1), "epoch_s": round(TRAINING_IMAGES / rate, 1),
            "eval_s_per_publictest": round(eval_s * 3589 / len(val[1]), 1), "compile_s": round(compile_s, 1),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None}


def measure_augmentation(train, val, plan: Plan, device: torch.device) -> dict:
    """Seconds per training step: batched on-device augmentation vs the per-image pipeline in a
    DataLoader (one worker per core), the same VGG model and optimizer on the same device."""
    width = plan.models[0][1]
    n = plan.loader_steps * plan.batch
    trainer = Trainer(_config("vgg", width, plan.batch, True), (train[0][:n], train[1][:n]), val, device=device)
    trainer.batches_per_epoch = 1
    trainer.train_one_epoch()  # warm-up
    _sync(device)
    trainer.batches_per_epoch = plan.loader_steps
    started = time.perf_counter()
    trainer.train_one_epoch()
    _sync(device)
    batched = time.perf_counter() - started
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(PerImageDataset(train[0][:n], train[1][:n]), batch_size=plan.batch,
                                         num_workers=workers, persistent_workers=False)
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
    return {"images": n, "dataloader_workers": workers, "batched_s": round(batched, 2),
            "per_image_s": round(per_image, 2), "ratio": round(per_image / batched, 2),
            "epoch_s_batched": round(batched * TRAINING_IMAGES / n, 1),
            "epoch_s_per_image": round(per_image * TRAINING_IMAGES / n, 1)}


def _packed_trial(images, labels, width: float, batch: int, device_name: str) -> dict:
    """One VGG trial-epoch over ``images`` inside a Ray task; its seconds and peak memory."""
    device = torch.device(device_name)
    torch.set_num_threads(1)
    trainer = Trainer(_config("vgg", width, batch, True), (images, labels), (images[:batch], labels[:batch]),
                      device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train_one_epoch()
    _sync(device)
    return {"seconds": time.perf_counter() - started,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}


def measure_packing(train, plan: Plan, device: torch.device) -> list[dict]:
    """k VGG trials at once through Ray fractional GPUs (CPU: one CPU each): trial-epochs per hour."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import bench/ by name
    on_gpu = device.type == "cuda"
    with ray_session(print):
        n = plan.packing_images
        images, labels = ray.put(train[0][:n]), ray.put(train[1][:n])
        width = plan.models[0][1]
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        rows = []

        def task_for(k: int):
            return ray.remote(num_gpus=1 / k if on_gpu else 0, num_cpus=max(1, cluster_cpus // k))(_packed_trial)

        most = max(plan.packing)  # warm-up: start the worker processes (torch import) outside the timings
        ray.get([task_for(most).remote(images, labels, width, plan.batch, "cuda" if on_gpu else "cpu")
                 for _ in range(most)])
        for k in plan.packing:
            task = task_for(k)
            started = time.perf_counter()
            results = ray.get([task.remote(images, labels, width, plan.batch, "cuda" if on_gpu else "cpu")
                               for _ in range(k)])
            wall = time.perf_counter() - started
            epochs = k * n / TRAINING_IMAGES
            peaks = [r["peak_memory_gb"] for r in results if r["peak_memory_gb"] is not None]
            rows.append({"trials": k, "wall_s": round(wall, 2), "trial_epochs_per_hour": round(epochs * 3600 / wall, 1),
                         "peak_memory_gb_per_trial": round(max(peaks), 2) if peaks else None})
        base = rows[0]["trial_epochs_per_hour"]
        for row in rows:
            row["vs_one_trial"] = round(row["trial_epochs_per_hour"] / base, 2)
        return rows


def measure_checkpoints(plan: Plan) -> list[dict]:
    """Bytes of one trial checkpoint before (everything) and after (lean state + best weights), on the CPU."""
    cases = [("vgg_spinal", "vgg", plan.models[0][1])] + ([("vit_l32_spinal", "vit_l32", 1.0)] if plan is FULL else [])
    rows = []
    for model, base, width in cases:
        before, after = measure(model, base, True, width, "ranger", device="cpu")
        rows.append({"model": model, "base_frozen": True, "optimizer": "ranger", "before_mb": round(before / 1e6, 3),
                     "after_mb": round(after / 1e6, 3), "ratio": round(before / after, 2)})
    return rows


def markdown(report: Report) -> str:
    """The report as Markdown tables."""
    lines = [f"# fer-tune device check: {report.card}", "",
             f"device {report.device}; torch {report.torch}; data: {report.data}"
             f"{'; --tiny (CPU check of the script, not a benchmark)' if report.tiny else ''}", "",
             f"## Training throughput ({EPOCH_NOTE}; evaluation: PublicTest ten-crop)", "",
             "| model | width | precision | compile | images/s | epoch (s) | PublicTest eval (s) | compile (s) | peak GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report.throughput:
        lines.append(f"| {r['model']} | {r['width']} | {r['precision']} | {'on' if r['compile'] else 'off'} | "
                     f"{r['images_per_s']} | {r['epoch_s']} | {r['eval_s_per_publictest']} | {r['compile_s']} | "
                     f"{r['peak_memory_gb'] if r['peak_memory_gb'] is not None else '-'} |")
    a = report.augmentation
    if a:
        lines += ["", "## Batched on-device augmentation vs per-image DataLoader (same model, same device)", "",
                  "| images | DataLoader workers | batched (s) | per-image (s) | ratio | epoch batched (s) | "
                  "epoch per-image (s) |", "|---|---|---|---|---|---|---|",
                  f"| {a['images']} | {a['dataloader_workers']} | {a['batched_s']} | {a['per_image_s']} | "
                  f"{a['ratio']}x | {a['epoch_s_batched']} | {a['epoch_s_per_image']} |"]
    lines += ["", "## VGG trials sharing one device through Ray", "",
              "| trials | wall (s) | trial-epochs / hour | vs one trial | peak GB per trial |", "|---|---|---|---|---|"]
    for r in report.packing:
        lines.append(f"| {r['trials']} | {r['wall_s']} | {r['trial_epochs_per_hour']} | {r['vs_one_trial']}x | "
                     f"{r['peak_memory_gb_per_trial'] if r['peak_memory_gb_per_trial'] is not None else '-'} |")
    lines += ["", "## Bytes per trial checkpoint", "", "| model | base frozen | optimizer | before (MB) | after (MB) | ratio |",
              "|---|---|---|---|---|---|"]
    for r in report.checkpoints:
        lines.append(f"| {r['model']} | yes | {r['optimizer']} | {r['before_mb']} | {r['after_mb']} | {r['ratio']}x |")
    lines += [""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Report:
    """Every measurement of the plan, in order, printing a line as each ends."""
    plan = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    train, val, source = _train_data(args, plan)
    report = Report(card, str(device), source, torch.__version__, args.tiny)
    started = time.perf_counter()
    variants = ((False, False), (True, False), (True, True)) if device.type == "cuda" else ((False, False),)
    for model, width, steps in plan.models:
        for fast, compiled in variants:
            if compiled and (not plan.compile or model.startswith("vit")):
                continue
            try:
                row = measure_throughput(model, width, steps, fast, compiled, train, val, plan, device)
            except Exception as exc:  # a model or compile that fails here is reported, not fatal
                report.notes.append(f"{model} {'bf16' if fast else 'fp32'} compile={compiled}: failed ({exc!s:.200})")
                continue
            report.throughput.append(row)
            print(f"[{time.perf_counter() - started:5.0f}s] {model} {row['precision']} compile={compiled}: "
                  f"{row['images_per_s']} images/s, epoch {row['epoch_s']} s", flush=True)
    report.augmentation = measure_augmentation(train, val, plan, device)
    print(f"[{time.perf_counter() - started:5.0f}s] augmentation: per-image / batched = "
          f"{report.augmentation['ratio']}x", flush=True)
    report.packing = measure_packing(train, plan, device)
    print(f"[{time.perf_counter() - started:5.0f}s] packing: " + ", ".join(
        f"{r['trials']} trials {r['vs_one_trial']}x" for r in report.packing), flush=True)
    with warnings.catch_warnings():  # pytorch-ranger's own deprecation notice
        warnings.simplefilter("ignore", UserWarning)
        report.checkpoints = measure_checkpoints(plan)
    if args.tiny:
        report.notes.append("--tiny: narrow models, a few steps on the CPU; these figures say nothing about a GPU")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="the real fer2013.csv(.xz); default: demo faces of the same size")
    parser.add_argument("--tiny", action="store_true", help="CPU, a few steps: checks the script in under a minute")
    parser.add_argument("--out", default="bench/gpu_check", help="folder for gpu_check.md and gpu_check.json")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out)
    write_text_atomic(out / "gpu_check.json", json.dumps(asdict(report), indent=2) + "\n")
    write_text_atomic(out / "gpu_check.md", markdown(report))
    print(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
