"""The one place where fer-tune relies on a library's non-public behaviour, each use with the versions
it was checked on. ``tests/test_compat.py`` fails loudly on a version that changed what it relies on.

- ranger21 0.1.0 (its last release): ``Ranger21.step`` applies stable weight decay and norm loss
  *after* its per-parameter loop, to whatever ``p`` the loop ended on, so only the last tensor of the
  model is ever decayed (lessw2020/Ranger21 issue 53, fixed by PR 54, never released).
  :func:`ranger21_reference_step` is that method with the block moved into the loop and nothing else;
  it is the definition fer-tune's fused step (:mod:`fer_tune.training.fused_optim`) is tested against, and the
  step it falls back to where the fused one does not apply.
- Ray 2.60: the driver prints every error its cluster publishes ("(raylet) A worker died ...") straight
  to stdout through ``ray._private.worker.print_to_stdstream``, whatever ``log_to_driver`` says (no
  public switch); :func:`ray_errors_to_logger` sends it to the 'ray' logger. :func:`ray_logs_folder`
  reads the node's log folder from ``ray._private.worker._global_node``. One of Ray's chatty loggers
  lives under ``ray._private`` (:data:`RAY_QUIET_LOGGERS`).
- Ray 2.60 gives a local instance the machine's network address and listens on every interface; the
  only switch that keeps a single-node instance on 127.0.0.1 is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
  read into ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` when Ray is imported
  (:func:`local_ray_on_loopback`, for local instances only: a node of a real cluster needs its address).
- Ray 2.60's ``OptunaSearch`` exposes no study: :func:`optuna_trial_of` reads its ``_ot_trials`` and
  ``_completed_trials``; :func:`intermediate_steps` reads Optuna 5.0's ``Trial._trial_id``.
- Ray 2.60's ``Tuner.fit()`` catches the first Ctrl-C itself (a graceful stop that saves the experiment
  state, as its docs say), returns as if the run had ended, and leaves its handler installed after it
  returns; when its handler catches a Ctrl-C it puts back the handler it found. :func:`tune_ctrl_c` relies
  on that to tell an interrupted run from a finished one.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

RANGER21_CHECKED = ("0.1.0",)
RAY_CHECKED = ("2.60.0",)
OPTUNA_CHECKED = ("5.0.0",)
RAY_QUIET_LOGGERS = ("ray", "ray.tune", "ray._private.authentication.authentication_token_setup")


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
        raise RuntimeError(
            f"ranger21: Ranger21.step is not the source of ranger21 {', '.join(RANGER21_CHECKED)} "
            "this fix was written for; check whether the installed version already applies weight "
            "decay per parameter"
        )
    block = source[block_start:block_end]
    source = source[:block_start] + source[block_end:]
    source = source.replace(anchor, anchor + textwrap.indent(block, "    "), 1)
    namespace: dict[str, Any] = {}
    exec(compile(source, module.__file__, "exec"), dict(vars(module)), namespace)
    return namespace["step"]


def ray_errors_to_logger() -> None:
    """Send the errors Ray's driver would print to stdout to the 'ray' logger instead (the raylet's
    log file keeps the text; fer-tune's progress line reports a failed trial itself)."""
    import ray._private.worker as ray_worker

    if hasattr(ray_worker, "print_to_stdstream"):  # the name Ray's error listener prints through
        ray_worker.print_to_stdstream = _log_ray_message


def _log_ray_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    logging.getLogger("ray").warning("(%s) %s", data.get("pid"), "\n".join(map(str, data.get("lines", []))))


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_ray_on_loopback() -> None:
    """Make the local Ray instance started next take 127.0.0.1 (and its workers likewise)."""
    import ray._private.ray_constants as ray_constants

    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def ray_logs_folder() -> str:
    """This node's Ray log folder (where the raylet says why a worker died)."""
    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else "session_latest/logs of Ray's temp folder"


def optuna_trial_of(searcher: Any, trial_id: str) -> Any | None:
    """The Optuna trial Ray's ``OptunaSearch`` keeps for a Tune trial not yet told, else None."""
    if trial_id in searcher._completed_trials:
        return None
    return searcher._ot_trials.get(trial_id)


def intermediate_steps(trial: Any) -> set[int]:
    """The steps an Optuna trial has reported intermediate values for."""
    return set(trial.storage.get_trial(trial._trial_id).intermediate_values)


@contextmanager
def tune_ctrl_c() -> Iterator[Callable[[], bool]]:
    """Run ``Tuner.fit()`` inside: yields a function that says, after fit() returned, whether Tune caught a
    Ctrl-C (it stops gracefully, saving its state; fer-tune's Ctrl-C is that stop, so Tune's switch that
    turns it off is dropped). On leaving, the handlers from before are back: Tune's would outlive fit() and
    swallow every later Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():  # no handler can be set from here
        yield lambda: False
        return
    os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield lambda: signal.getsignal(signal.SIGINT) is interrupt  # put back by Tune's handler: it caught one
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
