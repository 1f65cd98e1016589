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
    address = ray_address()
    if not address:
        local_ray_on_loopback()  # a laptop's search opens no port to its network
    check_head_answers(address)
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


def ray_address() -> str | None:
    """The cluster the driver joins (``RAY_ADDRESS``); None: a local Ray."""
    return os.environ.get("RAY_ADDRESS") or None


HEAD_ANSWER_TIMEOUT_S = 10.0  # ray.init waits forever for a head that does not answer: fer-tune asks first


def check_head_answers(address: str | None, timeout_s: float = HEAD_ANSWER_TIMEOUT_S) -> None:
    """A ``host:port`` in ``RAY_ADDRESS`` must answer gRPC's standard health check (Ray's GCS serves it)
    within ``timeout_s``; else the "cannot join" line: nothing listening, a firewall, or another kind of
    server there (ray.init would wait for ever). Other forms (``auto``, ``ray://``, TLS) are Ray's to check."""
    if not address or "://" in address or address == "auto" or os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
        return
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        check = channel.unary_unary("/grpc.health.v1.Health/Check")  # an empty request: the whole server
        check(b"", timeout=timeout_s)
    except grpc.FutureTimeoutError:
        why = f"nothing answered there as a Ray head within {timeout_s:g} s"
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return  # a head that asks for a token: ray.init says so
        why = f"the server there is not a Ray head: {exc.code().name.lower()}, {exc.details()}"
    else:
        return
    finally:
        channel.close()
    raise UserError(connection_problem(address, ConnectionError(why), auth_hint=False))


def connection_problem(address: str, exc: BaseException, auth_hint: bool = True) -> str:
    """One line: why the driver could not join the cluster at ``address``, and what to set."""
    lines = str(exc).strip().splitlines()
    first = (lines[0] if lines else type(exc).__name__).split(". Ensure")[0]
    said = f"{exc} {exc.__cause__ or ''}"
    token = (
        ""
        if not auth_hint or (os.environ.get("RAY_AUTH_MODE") == "token" and "uthenticat" not in said)
        else "; a cluster started by `ray start` may use token authentication: set RAY_AUTH_MODE=token and copy "
        "the head node's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN)"
    )
    return (
        f"RAY_ADDRESS={address}: cannot join the Ray cluster there ({first}){token}; else check the address "
        "(`ray status` on the head node prints it), or unset RAY_ADDRESS for a local Ray"
    )
