"""Ray start-up for the search and the retraining: quiet (Ray's own text stays in its log files),
local or the cluster at ``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator




QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # Ray's "Configuration for experiment" boxes and TensorBoard hint: off
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # noise for epoch-level checkpoints
    "RAY_DEDUP_LOGS": "0",
}



def _quiet_ray() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("ray", "ray.tune", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # a failed trial: Tune logs its traceback here; fer-tune's progress callback says it in one line,
    # with the path of the trial's error.txt (where the traceback is kept)
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    _ray_errors_to_its_logger()


def _ray_errors_to_its_logger() -> None:
    """Ray's driver prints every error its cluster publishes ("(raylet) A worker died or was killed
    ...") straight to stdout, whatever ``log_to_driver`` says; fer-tune's progress line reports a
    failed trial itself and the raylet's log file keeps the text, so those go to the 'ray' logger."""
    import ray._private.worker as ray_worker

    if hasattr(ray_worker, "print_to_stdstream"):  # the name Ray's error listener prints through
        ray_worker.print_to_stdstream = _log_ray_message


def ray_logs_folder() -> str:
    """This node's Ray log folder (where the raylet says why a worker died)."""
    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else "session_latest/logs of Ray's temp folder"


def _log_ray_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    logging.getLogger("ray").warning("(%s) %s", data.get("pid"), "\n".join(map(str, data.get("lines", []))))


@contextmanager
def ray_session(log: Callable[[str], None], keep: bool = False) -> Iterator[None]:
    """Connect to ``RAY_ADDRESS`` when set, else start a local Ray (dashboard off); shut it down at the
    end only if it was started here and ``keep`` is off (a search keeps it for its retraining)."""
    import ray

    _quiet_ray()
    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or None, include_dashboard=False, configure_logging=False,
             log_to_driver=False, logging_level="ERROR")
    resources = ray.cluster_resources()
    log(f"Ray: {f'cluster at {address}' if address else 'a local Ray instance'}; "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    try:
        yield
    finally:
        if not keep:
            ray.shutdown()


