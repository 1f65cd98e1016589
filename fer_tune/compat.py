"""The one place where fer-tune relies on a library's non-public behaviour, each use with the versions
it was checked on. ``tests/test_compat.py`` fails loudly on a version that changed what it relies on.

- ranger21 0.1.0 (its last release): ``Ranger21.step`` applies stable weight decay and norm loss
  *after* its per-parameter loop, to whatever ``p`` the loop ended on, so only the last tensor of the
  model is ever decayed (lessw2020/Ranger21 issue 53, fixed by PR 54, never released).
  :func:`ranger21_reference_step` is that method with the block moved into the loop and nothing else;
  it is the definition fer-tune's fused step (:mod:`fer_tune.training.fused_optim`) is tested against, and the
  step it falls back to where the fused one does not apply.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
from typing import Any, Callable

RANGER21_CHECKED = ("0.1.0",)


@functools.cache
def ranger21_reference_step() -> Callable:
    """``Ranger21.step`` of ranger21 0.1.0 with its weight-decay / norm-loss block moved into the
    per-parameter loop; refuses (RuntimeError) a source that is not the one this fix was written for."""
    import ranger21.ranger21 as module

    source = textwrap.dedent(inspect.getsource(module.Ranger21.step))
    block_start = source.find("        # stable decay and / or norm loss\n")
    block_end = source.find("        # innner loop, params\n")
    anchor = "            inner_grad = p.grad\n"
    if min(block_start, block_end, source.find(anchor)) < 0 or block_end < block_start:
        raise RuntimeError(f"ranger21: Ranger21.step is not the source of ranger21 {', '.join(RANGER21_CHECKED)} "
                           "this fix was written for; check whether the installed version already applies weight "
                           "decay per parameter")
    block = source[block_start:block_end]
    source = source[:block_start] + source[block_end:]
    source = source.replace(anchor, anchor + textwrap.indent(block, "    "), 1)
    namespace: dict[str, Any] = {}
    exec(compile(source, module.__file__, "exec"), dict(vars(module)), namespace)
    return namespace["step"]
