"""Everything fer-tune takes from a library's non-public side (``fer_tune/compat.py``) is still there:
a test that fails loudly, naming what changed, on a version that moved it."""

from __future__ import annotations

import optuna
import pytest
import ray._private.worker as ray_worker
from ray.tune.search.optuna import OptunaSearch

from fer_tune import compat


def test_ray_worker_still_prints_errors_through_print_to_stdstream():
    assert hasattr(ray_worker, "print_to_stdstream"), "ray._private.worker.print_to_stdstream is gone: update compat"
    assert hasattr(ray_worker, "_global_node"), "ray._private.worker._global_node is gone: update compat"


def test_optuna_search_still_keeps_its_trials_where_compat_reads_them():
    searcher = OptunaSearch(space=lambda trial: None, metric="val_acc", mode="max")
    assert isinstance(searcher._ot_trials, dict) and hasattr(searcher, "_completed_trials"), (
        "OptunaSearch no longer keeps _ot_trials / _completed_trials: update compat.optuna_trial_of"
    )
    study = optuna.create_study()
    trial = study.ask()
    trial.report(0.5, 3)
    assert compat.intermediate_steps(trial) == {3}


def test_ranger21_step_is_still_the_source_the_fix_was_written_for():
    assert callable(compat.ranger21_reference_step())


@pytest.mark.slow
def test_tune_still_catches_ctrl_c_and_puts_back_the_handler_it_found(ray_local, tmp_path):
    """``tune_ctrl_c`` tells an interrupted ``Tuner.fit()`` from a finished one by the handler Tune puts back."""
    import signal

    from ray import tune

    class CtrlCAtFirstResult(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            signal.raise_signal(signal.SIGINT)

    def counting(config):  # defined here: the workers receive it by value (the tests folder is not importable)
        for step in range(1, 4):
            tune.report({"step": step})

    before = signal.getsignal(signal.SIGINT)
    for callbacks, interrupted in (([], False), ([CtrlCAtFirstResult()], True)):
        tuner = tune.Tuner(
            counting,
            run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=callbacks, verbose=0),
        )
        with compat.tune_ctrl_c() as caught:
            tuner.fit()
            assert caught() is interrupted, f"Ray {ray_worker.ray.__version__}: Tune's Ctrl-C handling changed"
        assert signal.getsignal(signal.SIGINT) is before  # Tune's handler does not outlive fit()
