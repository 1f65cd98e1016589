"""Many tensors as one flat fp32 buffer, and the per-row / per-tensor reductions Ranger21's step needs over it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FlatLayout:
    """Where each tensor of a list sits in one flat buffer, and the segments the step reduces over.

    A tensor is flattened in its memory order with dimension 0 outermost (a view for contiguous and
    channels-last tensors); a 3-d tensor as (0, 2, 1), so that Ranger21's norm over dimension 1 is a
    contiguous segment. Segment kinds: ``norm`` (Ranger21's ``unit_norm``: per row of dimension 0, per
    (i, k) for 3-d tensors, the whole tensor for 0-d / 1-d), ``gc`` (per row of dimension 0; its mask
    leaves 1-d tensors alone), ``whole`` (per tensor; its mask leaves tensors of <= 2 elements alone).

    On an accelerator a reduction or an expansion is one operation over every segment
    (``segment_reduce``, ``repeat_interleave``); on the CPU, where an operation costs microseconds and
    those two are slow, it runs per tensor on 2-d views of the buffer (rows x segment length)."""

    perms: list[tuple[int, ...]]
    permuted_shapes: list[torch.Size]
    numels: list[int]
    total: int
    rows: dict[str, list[int]]  # kind -> segments per tensor
    lengths: dict[str, torch.Tensor]  # kind -> the length of every segment, in buffer order
    gc_mask: torch.Tensor
    whole_denominators: torch.Tensor
    whole_mask: torch.Tensor
    one_launch: bool
    gc_on: list[bool] = field(default_factory=list)
    segment_views: dict = field(default_factory=dict)

    @classmethod
    def of(cls, tensors: list[torch.Tensor], one_launch: bool | None = None) -> FlatLayout:
        """The layout of ``tensors``; ``one_launch`` None: one launch per reduction on an accelerator only."""
        perms, shapes, numels = [], [], []
        rows: dict[str, list[int]] = {"norm": [], "gc": [], "whole": []}
        for t in tensors:
            d, n = t.dim(), t.numel()
            perm = (0, 2, 1) if d == 3 else (0, *sorted(range(1, d), key=lambda i: -t.stride(i))) if d else ()
            perms.append(perm)
            shapes.append(t.permute(perm).shape if d else torch.Size([]))
            numels.append(n)
            rows["norm"].append(1 if d <= 1 else t.shape[0] * t.shape[2] if d == 3 else t.shape[0])
            rows["gc"].append(t.shape[0] if d > 1 else 1)
            rows["whole"].append(1)
        device = tensors[0].device
        lengths = {
            kind: torch.tensor([n // r for n, r in zip(numels, per) for _ in range(r)], dtype=torch.long, device=device)
            for kind, per in rows.items()
        }
        gc_mask = torch.tensor(
            [float(t.dim() > 1) for t, r in zip(tensors, rows["gc"]) for _ in range(r)], device=device
        )
        numel_t = torch.tensor(numels, dtype=torch.float32, device=device)
        return cls(
            perms,
            shapes,
            numels,
            sum(numels),
            rows,
            lengths,
            gc_mask,
            (numel_t - 1).clamp(min=1),
            numel_t > 2,
            device.type != "cpu" if one_launch is None else one_launch,
            [t.dim() > 1 for t in tensors],
        )

    def flatten(self, tensors: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """``tensors`` in this layout's order, in one fp32 buffer (``out``, or a new one)."""
        return torch.cat([t.permute(perm).reshape(-1) for t, perm in zip(tensors, self.perms)], out=out)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's place in ``flat``, as a view of the tensor's shape."""
        pieces = flat.split(self.numels)
        return [
            piece.view(shape).permute(_inverse(perm))
            for piece, shape, perm in zip(pieces, self.permuted_shapes, self.perms)
        ]

    def _segments(self, x: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """2-d views (segments x length) of each tensor's place in ``x``, cached for the step's buffers."""
        key = (x.data_ptr(), kind)
        if key not in self.segment_views:
            self.segment_views[key] = [
                piece.view(r, n // r) for piece, r, n in zip(x.split(self.numels), self.rows[kind], self.numels)
            ]
        return self.segment_views[key]

    def apply_(self, x: torch.Tensor, op: str, values: torch.Tensor, kind: str) -> None:
        """``x.<op>_(value of its segment)`` for every element, in place (op: mul, sub, div)."""
        if self.one_launch:
            getattr(x, f"{op}_")(torch.repeat_interleave(values, self.lengths[kind], output_size=self.total))
            return
        for segment, part in zip(self._segments(x, kind), values.split(self.rows[kind])):
            getattr(segment, f"{op}_")(part[:, None])

    def row_norms(self, x: torch.Tensor) -> torch.Tensor:
        """Ranger21's ``unit_norm`` of every tensor, one value per norm segment."""
        if self.one_launch:
            return torch.segment_reduce(x * x, "sum", lengths=self.lengths["norm"], unsafe=True).sqrt()
        return torch.cat([torch.linalg.vector_norm(segment, dim=1) for segment in self._segments(x, "norm")])

    def centralize(self, g: torch.Tensor) -> None:
        """Ranger21's ``centralize_gradient`` of every tensor, in place (``unsafe``: no host-side check)."""
        if self.one_launch:
            means = torch.segment_reduce(g, "mean", lengths=self.lengths["gc"], unsafe=True) * self.gc_mask
            self.apply_(g, "sub", means, "gc")
            return
        for segment, on in zip(self._segments(g, "gc"), self.gc_on):
            if on:
                segment.sub_(segment.mean(1, keepdim=True))

    def normalize(self, g: torch.Tensor) -> None:
        """Ranger21's ``normalize_gradient`` of every tensor (divided by its std + 1e-8), in place."""
        if self.one_launch:
            lengths = self.lengths["whole"]
            deviation = g - torch.repeat_interleave(
                torch.segment_reduce(g, "mean", lengths=lengths, unsafe=True), lengths, output_size=self.total
            )
            sum_sq = torch.segment_reduce(deviation.square_(), "sum", lengths=lengths, unsafe=True)
            std = (sum_sq / self.whole_denominators).sqrt()
            self.apply_(g, "div", torch.where(self.whole_mask, std + 1e-8, 1.0), "whole")
            return
        for segment, n in zip(self._segments(g, "whole"), self.numels):
            if n > 2:
                segment.div_(segment.std() + 1e-8)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return tuple(inverse)
