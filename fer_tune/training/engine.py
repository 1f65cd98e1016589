"""Train one configuration and evaluate it: the loop every command and every trial runs.

The whole split lives on the device as one uint8 tensor; augmentation is batched there
(:mod:`fer_tune.training.augment`). Selection uses the validation split only; the test split is never
passed to a :class:`Trainer`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_tune.errors import UserError
from fer_tune.metrics import macro_f1
from fer_tune.models import create_model, model_info
from fer_tune.models.vit import PretrainedViT, resolve_pretrained
from fer_tune.training.augment import AugmentConfig, BatchAugmenter
from fer_tune.training.config import TrainConfig
from fer_tune.training.device import apply_backend_settings, backend_settings, pick_device, seed_everything
from fer_tune.training.optim import build_optimizer, build_scheduler, current_lr, step_scheduler
from fer_tune.training.transfer import TransferReport, frozen_tensors, train_mode, transfer_weights
from fer_tune.training.views import predict_view_logits, ten_and_single


@dataclass
class EpochResult:
    """What one epoch produced; every field is a plain scalar (what Ray Tune reports)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float  # ten-crop (or the recipe's only view), the selection metric
    val_acc_single: float  # single centre crop
    val_f1: float
    lr: float
    epoch_time: float
    diverged: bool = False
    step_time: float = 0.0  # seconds per training step, this epoch
    peak_memory_gb: float = 0.0  # CUDA memory peak of this epoch (0: not measured, on the CPU)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for CSV / YAML / Ray."""
        return asdict(self)


def stalled(scores: Sequence[float], patience: int, mode: str = "max") -> bool:
    """True when the best of ``scores`` (one per epoch; the first of equal bests counts) is ``patience``
    or more epochs old: early stopping. ``patience`` 0 never stops."""
    if patience <= 0 or not scores:
        return False
    values = np.asarray(scores, dtype=float)
    values = np.where(np.isfinite(values), values, -np.inf if mode == "max" else np.inf)
    best = int(np.argmax(values) if mode == "max" else np.argmin(values))
    return len(values) - 1 - best >= patience


def epoch_batches(n: int, batch_size: int) -> list[slice]:
    """The batches of one epoch over ``n`` shuffled images: ceil(n / batch_size) slices, the last one
    partial; a last batch of a single image joins the one before (BatchNorm needs two samples)."""
    count = max(1, math.ceil(n / batch_size))
    if count > 1 and n % batch_size == 1:
        count -= 1
    return [slice(b * batch_size, n if b == count - 1 else (b + 1) * batch_size) for b in range(count)]


class Trainer:
    """Trains ``config`` on (train_images, train_labels), selects on (val_images, val_labels)."""

    def __init__(
        self,
        config: TrainConfig,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        *,
        device: str | torch.device | None = None,
        base_state: dict[str, torch.Tensor] | None = None,
        pretrained: PretrainedViT | None = None,
    ):
        self.config = config
        self.device = pick_device(str(device) if device else None)
        seed_everything(config.seed)
        info = model_info(config.model)
        self.model: nn.Module = create_model(
            config.model,
            width=config.width,
            activation=config.activation,
            pretrained=(pretrained or resolve_pretrained(config.pretrained_path)) if info.recipe == "vit" else None,
        )
        self.transfer: TransferReport | None = None
        if base_state is not None:
            self.transfer = transfer_weights(self.model, base_state, freeze=config.freeze)
        on_cuda = self.device.type == "cuda"
        self.autocast = on_cuda and config.amp
        self.backend = backend_settings(config, self.device)
        if on_cuda:
            apply_backend_settings(self.backend)
        # channels-last convolutions: faster on CUDA and on the CPU too (bench/bench_channels_last.py)
        self.channels_last = config.channels_last and info.recipe != "vit"
        if self.channels_last:
            self.model.to(self.device, memory_format=torch.channels_last)
        else:
            self.model.to(self.device)
        self.train_images = torch.tensor(train[0], dtype=torch.uint8).to(self.device)
        self.train_labels = torch.tensor(train[1], dtype=torch.long).to(self.device)
        self.val_images = torch.tensor(val[0], dtype=torch.uint8).to(self.device)
        self.val_labels = torch.tensor(val[1], dtype=torch.long).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.augmenter = BatchAugmenter(AugmentConfig(recipe=info.recipe), self.generator)
        n = len(self.train_labels)
        self.batches_per_epoch = len(epoch_batches(n, config.batch_size))
        self.optimizer = build_optimizer(config, self.model.parameters(), self.batches_per_epoch)
        self.scheduler = build_scheduler(config, self.optimizer)
        self.epoch = 0
        self.best_val_acc = -1.0
        self.history: list[EpochResult] = []
        self.lr_replay: list[float] | None = None
        # the loss check is a host sync: every batch on CPU (free), every 16th on an accelerator
        self.loss_check_every = 1 if self.device.type == "cpu" else 16

    def replay_learning_rates(self, rates: list[float]) -> None:
        """Train epoch k at ``rates[k]`` instead of stepping the scheduler (a refit repeating a
        ReduceLROnPlateau run whose validation split has become training data)."""
        self.lr_replay = list(rates)

    # ------------------------------------------------------------ training

    def train_one_epoch(self, max_batches: int | None = None) -> tuple[float, float, bool]:
        """One pass over the training split, ``batches_per_epoch`` batches of ``batch_size`` (or the first
        ``max_batches`` of them, for a measurement); returns (mean loss, accuracy, diverged)."""
        train_mode(self.model)
        n = len(self.train_labels)
        order = torch.randperm(n, generator=self.generator, device=self.device)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for b, batch in enumerate(epoch_batches(n, self.config.batch_size)[: max_batches or self.batches_per_epoch]):
            idx = order[batch]
            inputs, targets = self.augmenter.train(self.train_images[idx], self.train_labels[idx])
            inputs = self._to_model_format(inputs)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.model(inputs)
                loss = F.cross_entropy(logits.float(), targets)
            if b % self.loss_check_every == 0 and not torch.isfinite(loss):
                return float("nan"), 0.0, True
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            try:
                self.optimizer.step()
            except RuntimeError as exc:  # Ranger21: "hit nan for variance_normalized"
                if "nan" not in str(exc).lower():
                    raise
                return float("nan"), 0.0, True
            total_loss += loss.detach() * len(targets)
            correct += (logits.argmax(1) == targets).sum()
            seen += len(targets)
        mean_loss = float(total_loss) / seen
        if not math.isfinite(mean_loss):
            return float("nan"), 0.0, True
        return mean_loss, int(correct) / seen, False

    def _to_model_format(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def predict_view_logits(self, images: torch.Tensor, crops: str = "ten") -> torch.Tensor:
        """Logits (N, V, 7) of every evaluation view of uint8 images on the device."""
        return predict_view_logits(
            self.model,
            images,
            self.augmenter,
            crops,
            self.config.eval_batch_size,
            autocast=self.autocast,
            channels_last=self.channels_last,
        )

    def predict_logits(self, images: torch.Tensor, crops: str = "ten") -> torch.Tensor:
        """Logits (N, 7) for uint8 images on the device, averaged over the evaluation crops."""
        return self.predict_view_logits(images, crops).mean(1)

    def validate(self) -> tuple[float, float, float, float]:
        """(loss, ten-crop accuracy, single-crop accuracy, macro F1) on the validation split; the single
        crop is the centre view of the ten, not a second pass."""
        logits, single = ten_and_single(self.predict_view_logits(self.val_images, "ten"))
        loss = float(F.cross_entropy(logits, self.val_labels))
        pred = logits.argmax(1)
        acc = float((pred == self.val_labels).float().mean())
        acc_single = float((single.argmax(1) == self.val_labels).float().mean())
        f1 = macro_f1(self.val_labels.cpu().numpy(), pred.cpu().numpy())
        return loss, acc, acc_single, f1

    def step_epoch(self) -> EpochResult:
        """Train one epoch, validate, step the scheduler; returns the epoch's record."""
        start = time.perf_counter()
        replaying = self.lr_replay is not None and self.epoch < len(self.lr_replay)
        if replaying:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_replay[self.epoch]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        train_loss, train_acc, diverged = self.train_one_epoch()  # ends in a host read: the time is real
        step_time = (time.perf_counter() - start) / self.batches_per_epoch
        self.epoch += 1
        if not diverged:
            val_loss, val_acc, val_single, val_f1 = self.validate()
            # the epoch's last step can leave non-finite weights under a finite training loss: such an
            # epoch never scores (it would be kept as best.pt with every weight NaN)
            diverged = not math.isfinite(val_loss) or not self.weights_are_finite()
        if diverged:
            result = EpochResult(
                self.epoch,
                math.nan,
                train_acc,
                math.nan,
                0.0,
                0.0,
                0.0,
                current_lr(self.optimizer),
                time.perf_counter() - start,
                True,
                step_time,
            )
        else:
            lr = current_lr(self.optimizer)
            if not replaying:
                step_scheduler(self.scheduler, val_acc)
            result = EpochResult(
                self.epoch,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                val_single,
                val_f1,
                lr,
                time.perf_counter() - start,
                step_time=step_time,
            )
            self.best_val_acc = max(self.best_val_acc, val_acc)
        if self.device.type == "cuda":
            result.peak_memory_gb = torch.cuda.max_memory_allocated(self.device) / 1e9
        self.history.append(result)
        return result

    def weights_are_finite(self) -> bool:
        """True when every weight and buffer of the model is finite (one host read)."""
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def fit(self, on_epoch: Callable[[Trainer, EpochResult], None] | None = None) -> list[EpochResult]:
        """Run the remaining epochs (resumes after :meth:`load_state_dict`); stops at divergence."""
        while self.epoch < self.config.epochs:
            result = self.step_epoch()
            if on_epoch is not None:
                on_epoch(self, result)
            if result.diverged:
                break
        return self.history

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (tensors and plain types only). Frozen
        tensors are left out: a run rebuilt from the same config and base already holds them."""
        return {
            "config": self.config.to_dict(),
            "model": self.trainable_weights(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "history": [r.as_dict() for r in self.history],
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def trainable_weights(self) -> dict[str, torch.Tensor]:
        """The model's tensors less the frozen ones (which a run rebuilt from its config and base holds)."""
        frozen = frozen_tensors(self.model)
        return {name: tensor for name, tensor in self.model.state_dict().items() if name not in frozen}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load :meth:`trainable_weights` (or all weights); anything else is a :class:`UserError`."""
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        not_frozen = sorted(set(missing) - frozen_tensors(self.model))
        if unexpected or not_frozen:
            raise UserError(
                f"a saved state does not fit this {self.config.model} run (missing "
                f"{not_frozen[:3]}, unexpected {unexpected[:3]}); "
                "it was saved with another model, base or freeze setting: start the run afresh"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (e.g. a Ray Tune checkpoint after a worker died)."""
        self.load_weights(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best_val_acc = float(state["best_val_acc"])
        self.history = [EpochResult(**r) for r in state["history"]]
        self.generator.set_state(state["generator"].to(self.generator.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
