"""Ranger and Ranger21 steps in a few dozen tensor operations, whatever the number of parameter tensors.

On a GPU every tensor operation is a kernel launch of several microseconds; the packages' steps loop
over the parameters (650 operations a step for VGGSpinalNet with Ranger, 19,817 for EfficientNetV2-S
with Ranger21). The classes here keep the packages as the definition: they subclass pytorch-ranger's
``Ranger`` and ranger21's ``Ranger21`` (hyperparameters, schedule methods, state layout unchanged, so a
checkpoint saved by the packages' steps resumes) and replace only ``step``:

- :class:`FusedRanger`: RAdam + lookahead as multi-tensor (``torch._foreach_*``) operations.
- :class:`FusedRanger21`: every parameter, gradient and state tensor of the step is one flat fp32
  buffer; per-row norms (adaptive gradient clipping, norm loss), gradient centralisation and the
  per-tensor gradient normalisation are segment reductions over it. Stable weight decay and norm
  loss apply to every tensor (ranger21 issue 53, see :mod:`fer_tune.compat`). The state tensors are
  views of those buffers, shaped as each parameter.

Neither reads a device value back (no host sync). Where the fused step does not apply (non-fp32 or
sparse tensors, parameters at different step counts, Ranger21's madgrad / adabelief / Chebyshev
variants) the reference step runs. ``tests/test_fused_optim.py`` checks parity with the reference steps.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_ranger import Ranger
from ranger21 import Ranger21

from fer_tune.compat import ranger21_reference_step
from fer_tune.training.flat_layout import FlatLayout

# Ranger21 counters that live outside ``Optimizer.state_dict()`` but steer its schedule
RANGER21_COUNTERS = (
    "lookahead_step",
    "current_iter",
    "epoch_count",
    "current_epoch",
    "warmup_complete",
    "warmup_curr_pct",
    "current_lr",
    "param_size",
    "warmdown_displayed",
)
RANGER21_STATE = ("grad_ma", "variance_ma", "lookahead_params", "neg_grad_ma", "max_variance_ma")


def _fusable(tensors: list[torch.Tensor]) -> bool:
    return all(t.dtype == torch.float32 and not t.is_sparse for t in tensors)


class FusedRanger(Ranger):
    """pytorch-ranger's ``Ranger`` (RAdam + lookahead) with the step as multi-tensor operations."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not _fusable(params + grads):
                return super().step(closure)
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["slow_buffer"] = p.detach().clone()
            steps = {self.state[p]["step"] for p in params}
            if len(steps) > 1:  # parameters that missed steps: the reference handles them one by one
                return super().step(closure)
            self._fused_group_step(group, params, grads, steps.pop() + 1)
        return None

    def _fused_group_step(self, group: dict, params: list, grads: list, step: int) -> None:
        states = [self.state[p] for p in params]
        exp_avg, exp_avg_sq = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        torch._foreach_mul_(exp_avg, beta1)
        torch._foreach_add_(exp_avg, grads, alpha=1 - beta1)
        for s in states:
            s["step"] = step
        beta2_t = beta2**step
        n_sma_max = 2 / (1 - beta2) - 1
        n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
        if n_sma > self.N_sma_threshhold:
            step_size = math.sqrt(
                (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
            ) / (1 - beta1**step)
        else:
            step_size = 1.0 / (1 - beta1**step)
        if group["weight_decay"] != 0:
            torch._foreach_add_(params, params, alpha=-group["weight_decay"] * lr)
        if n_sma > self.N_sma_threshhold:
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_addcdiv_(params, exp_avg, denom, value=-step_size * lr)
        else:
            torch._foreach_add_(params, exp_avg, alpha=-step_size * lr)
        if step % group["k"] == 0:
            slow = [s["slow_buffer"] for s in states]
            torch._foreach_add_(slow, torch._foreach_sub(params, slow), alpha=self.alpha)
            torch._foreach_copy_(params, slow)


class FusedRanger21(Ranger21):
    """ranger21's ``Ranger21`` with weight decay and norm loss on every parameter (issue 53), its
    prints swallowed, its schedule counters saved in ``state_dict`` (a resumed run continues exactly),
    and the step over flat buffers (see :class:`FlatLayout`)."""

    def __init__(self, *args: Any, one_launch: bool | None = None, **kwargs: Any):
        """The package's arguments; ``one_launch``: reduce over all segments in one operation (default: on
        an accelerator only; the CPU runs its reductions per tensor, faster there)."""
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its whole set-up
            super().__init__(*args, **kwargs)
        self.one_launch = one_launch
        self._flat: tuple | None = None  # (params, layout, buffers by state key), built at the first step

    def step(self, closure=None):
        with contextlib.redirect_stdout(io.StringIO()):  # warm-up / warm-down notices
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            if self._fused_applies(params):
                return self._fused_step()
            return ranger21_reference_step()(self, closure)

    def _fused_applies(self, params: list[torch.Tensor]) -> bool:
        if not params or len(self.param_groups) != 1 or self.use_madgrad or self.use_adabelief or self.use_cheb:
            return False
        if not self.momentum_pnm or self.gc_conv_only or not _fusable(params + [p.grad for p in params]):
            return False
        steps = {self.state[p].get("step", 0) for p in params}
        return len(steps) == 1

    def _buffers(self, params: list[torch.Tensor]) -> tuple[FlatLayout, dict[str, torch.Tensor]]:
        """The flat layout and state buffers; built again when the parameters with gradients changed
        or the state was loaded (its tensors then become views of the buffers)."""
        if self._flat is not None and self._flat[0] == [id(p) for p in params]:
            return self._flat[1], self._flat[2]
        layout = FlatLayout.of(params, self.one_launch)
        first = len(self.state[params[0]]) == 0
        buffers = {}
        for key in RANGER21_STATE:
            if key == "lookahead_params" and not self.lookahead_active:
                continue
            if first:
                buffers[key] = (
                    layout.flatten(params).clone()
                    if key == "lookahead_params"
                    else torch.zeros(layout.total, device=params[0].device)
                )
            else:
                buffers[key] = layout.flatten([self.state[p][key] for p in params]).clone()
        for key, flat in list(buffers.items()):
            for p, view in zip(params, layout.views(flat)):
                self.state[p][key] = view
        buffers["params"], buffers["grads"] = (torch.empty(layout.total, device=params[0].device) for _ in range(2))
        for p in params:
            self.state[p].setdefault("step", 0)
            self.state[p] = {k: self.state[p][k] for k in ("step", *RANGER21_STATE) if k in self.state[p]}
        self._flat = ([id(p) for p in params], layout, buffers)
        return layout, buffers

    @torch.no_grad()
    def _fused_step(self) -> None:
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        layout, buf = self._buffers(params)
        P = layout.flatten(params, out=buf["params"])
        G = layout.flatten([p.grad for p in params], out=buf["grads"])
        if not self.param_size:
            self.param_size = layout.total
        if self.agc_active:  # adaptive gradient clipping, per row
            max_norm = layout.row_norms(P).clamp_(min=self.agc_eps) * self.agc_clip_val
            g_norm = layout.row_norms(G)
            factor = torch.where(g_norm > max_norm, max_norm / g_norm.clamp(min=1e-6), 1.0)
            layout.apply_(G, "mul", factor, "norm")
        self._condition(layout, G)
        step = self.state[params[0]]["step"] + 1
        for p in params:
            self.state[p]["step"] = step
        beta1, beta2 = group["betas"]
        bias_correction2 = 1 - beta2**step
        V = buf["variance_ma"]
        V.mul_(beta2).addcmul_(G, G, value=1 - beta2)
        variance_normalized = (V.sum() / bias_correction2 / layout.total).sqrt()
        # the package raises "hit nan for variance_normalized" here, a host sync every step; non-finite
        # values reach the loss instead, which the Trainer checks (every 16th batch on an accelerator)
        lr = group["lr"]
        if self.use_warmup and not self.warmup_complete:
            lr = self.warmup_dampening(lr, step)
        if self.warmdown_active:
            lr = self.get_warm_down(lr, step)
            assert lr > 0, "lr went negative"
        if group["weight_decay"]:  # stable weight decay, every tensor
            P.mul_(1 - group["weight_decay"] * lr / variance_normalized)
        if self.normloss_active:
            correction = 2 * self.normloss_factor * (1 - 1 / (layout.row_norms(P) + self.eps))
            layout.apply_(P, "mul", 1 - lr * correction, "norm")
        grad_ma, neg_grad_ma = (
            (buf["grad_ma"], buf["neg_grad_ma"]) if step % 2 == 1 else (buf["neg_grad_ma"], buf["grad_ma"])
        )
        torch.maximum(buf["max_variance_ma"], V, out=V)
        denom = V.sqrt().div_(math.sqrt(bias_correction2)).add_(group["eps"])
        self._condition(layout, G)  # the package centralises and normalises again here
        grad_ma.mul_(beta1**2).add_(G, alpha=1 - beta1**2)
        noise_norm = math.sqrt((1 + beta2) ** 2 + beta2**2)
        if self.softplus:
            denom = F.softplus(denom, beta=self.beta_softplus)
        # the package weighs by its ``momentum_pnm`` flag (True = 1), not by pnm_momentum_factor
        pnmomentum = neg_grad_ma.mul(-self.momentum_pnm).add_(grad_ma, alpha=1 + self.momentum_pnm).mul_(1 / noise_norm)
        P.addcdiv_(pnmomentum, denom, value=-lr / (1 - beta1**step))
        if self.lookahead_active:
            self.lookahead_step += 1
            if self.lookahead_step >= self.lookahead_mergetime:
                self.lookahead_step = 0
                P.mul_(self.lookahead_alpha).add_(buf["lookahead_params"], alpha=1.0 - self.lookahead_alpha)
                buf["lookahead_params"].copy_(P)
        torch._foreach_copy_(params, layout.views(P))
        self.track_epochs(step)

    def _condition(self, layout: FlatLayout, G: torch.Tensor) -> None:
        if self.use_gc:
            layout.centralize(G)
        if self.use_gcnorm:
            layout.normalize(G)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranger21_counters": {k: getattr(self, k) for k in RANGER21_COUNTERS}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        counters = state_dict.pop("ranger21_counters", {})
        super().load_state_dict(state_dict)
        for key, value in counters.items():
            setattr(self, key, value.item() if isinstance(value, torch.Tensor) else value)
        self._flat = None  # the loaded tensors become views of new buffers at the next step
