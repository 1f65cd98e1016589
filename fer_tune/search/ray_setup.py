"""Ray start-up for the search and the retraining: quiet (Ray's own text stays in its log files),
local or the cluster at ``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from fer_tune.compat import RAY_QUIET_LOGGERS, local_ray_on_loopback, ray_errors_to_logger
from fer_tune.errors import UserError
from fer_tune.sigterm import sigterm_kept_across

log = logging.getLogger(__name__)

QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # Ray's "Configuration for experiment" boxes and TensorBoard hint: off
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # noise for epoch-level checkpoints
    "RAY_DEDUP_LOGS": "0",
}


def quiet_ray() -> None:
    """Ray's and Tune's own console lines off (their log files keep them): before any use of Ray Tune."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in RAY_QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # a failed trial: Tune logs its traceback here; fer-tune's progress callback says it in one line,
    # with the path of the trial's error.txt (where the traceback is kept)
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)  # "Trials did not complete": fer-tune says which
    ray_errors_to_logger()


@contextmanager
def ray_session(keep: bool = False) -> Iterator[None]:
    """Connect to ``RAY_ADDRESS`` when set, else start a local Ray (dashboard off); shut it down at the
    end only if it was started here and ``keep`` is off (a search keeps it for its retraining)."""
    import ray

    quiet_ray()
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        local_ray_on_loopback()  # a laptop's search opens no port to its network
    try:
        with sigterm_kept_across():  # ray.init sets a SIGTERM handler that prints a crash report and exits
            ray.init(
                address=address or None,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
                logging_level="ERROR",
            )
    except Exception as exc:  # Ray raises ConnectionError, AuthenticationError, RuntimeError, ...
        if not address:
            raise
        raise UserError(connection_problem(address, exc)) from None
    resources = ray.cluster_resources()
    log.info(
        f"Ray: {f'cluster at {address}' if address else 'a local Ray instance'}; "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )
    try:
        yield
    finally:
        if not keep:
            ray.shutdown()


def connection_problem(address: str, exc: BaseException) -> str:
    """One line: why the driver could not join the cluster at ``address``, and what to set."""
    lines = str(exc).strip().splitlines()
    first = (lines[0] if lines else type(exc).__name__).split(". Ensure")[0]
    said = f"{exc} {exc.__cause__ or ''}"
    token = (
        ""
        if os.environ.get("RAY_AUTH_MODE") == "token" and "uthenticat" not in said
        else "; a cluster started by `ray start` may use token authentication: set RAY_AUTH_MODE=token and copy "
        "the head node's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN)"
    )
    return (
        f"RAY_ADDRESS={address}: cannot join the Ray cluster there ({first}){token}; else check the address "
        "(`ray status` on the head node prints it), or unset RAY_ADDRESS for a local Ray"
    )
