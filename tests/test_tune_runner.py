"""The Tune runner's own rules: trial resources (gpus_per_trial auto), the progress line, a run's history."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from fer_tune.errors import UserError
from fer_tune.search import runner as tune_runner
from fer_tune.search.runner import Progress, TuneJob, trial_resources, trials_per_gpu
from fer_tune.search.space_file import load_search_space
from fer_tune.search_folder import read_history


def test_trials_per_gpu_fit_by_measured_memory_with_headroom():
    gb = 1e9
    assert trials_per_gpu(int(10 * gb), int(141 * gb)) == 8  # 141 GB holds 11 such trials; at most 8 share a GPU
    assert trials_per_gpu(int(30 * gb), int(141 * gb)) == 3  # 30 GB x 1.25 = 37.5 GB each
    assert trials_per_gpu(int(120 * gb), int(141 * gb)) == 1


def _job(gpus) -> TuneJob:
    progress = Progress("search x", "val_acc", "max", 1, 1, print)
    return TuneJob("ray", None, None, None, {}, gpus, 2.0, progress)


def test_auto_gpu_share_is_probed_on_a_gpu_cluster_and_zero_without_one(console, monkeypatch):
    monkeypatch.setattr(tune_runner, "node_resources", lambda: [{"CPU": 16.0}])
    assert trial_resources(_job("auto")) == {"cpu": 2.0, "gpu": 0.0}
    assert console.messages == ["gpus_per_trial auto: Ray sees no GPU, so the trials run on CPUs"]
    assert trial_resources(_job(0.5)) == {"cpu": 2.0, "gpu": 0.0}
    assert console.messages[-1] == "gpus_per_trial 0.5: Ray sees no GPU, so the trials run on CPUs"
    monkeypatch.setattr(tune_runner, "node_resources", lambda: [{"CPU": 16.0, "GPU": 1.0}])
    monkeypatch.setattr(tune_runner, "probe_gpu_share", lambda job: 0.25)
    assert trial_resources(_job("auto")) == {"cpu": 2.0, "gpu": 0.25}
    assert trial_resources(_job(0.5)) == {"cpu": 2.0, "gpu": 0.5}


def test_a_trial_asks_no_more_cpus_than_one_node_that_can_hold_it_has(console, monkeypatch):
    """Ray places a trial on one node: a request no node fits would stay PENDING forever, with Ray's
    warning in its own logs. Two nodes of 2 CPUs hold 4 CPUs, but no trial of 4."""
    monkeypatch.setattr(tune_runner, "node_resources", lambda: [{"CPU": 2.0}, {"CPU": 2.0}])
    job = replace(_job(0.0), cpus=4.0)
    assert trial_resources(job) == {"cpu": 2.0, "gpu": 0.0}
    assert console.messages == ["cpus_per_trial 4: no node has that many CPUs (the most, 2), so each trial asks 2"]
    # with a GPU share, only the GPU nodes count: a 16-CPU node without a GPU holds no such trial
    gpu_nodes = [{"CPU": 16.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 6.0, "GPU": 2.0}]
    monkeypatch.setattr(tune_runner, "node_resources", lambda: gpu_nodes)
    assert trial_resources(replace(_job(0.5), cpus=8.0)) == {"cpu": 6.0, "gpu": 0.5}
    assert console.messages[-1] == (
        "cpus_per_trial 8: no node with a GPU has that many CPUs (the most, 6), so each trial asks 6"
    )
    assert trial_resources(replace(_job(0.5), cpus=3.0)) == {"cpu": 3.0, "gpu": 0.5}  # fits: unchanged
    assert len(console.messages) == 2


def test_auto_is_accepted_in_the_yaml_and_on_the_command_line(tmp_path, capsys):
    from fer_tune.cli import main

    path = tmp_path / "auto.yaml"
    path.write_text("model: vgg\nresources: {gpus_per_trial: auto, cpus_per_trial: 2}\n")
    assert load_search_space(str(path)).resources.gpus_per_trial == "auto"
    path.write_text("model: vgg\nresources: {gpus_per_trial: most}\n")
    with pytest.raises(UserError, match="resources.gpus_per_trial = 'most' is not a valid"):
        load_search_space(str(path))
    assert main(["--search", "vgg", "--gpus-per-trial", "some", "--smoke"]) == 2
    assert "invalid value: 'some' (a number such as 0.5, or auto)" in capsys.readouterr().err


def test_progress_line_shows_elapsed_time_left_and_the_best():
    progress = Progress("search demo", "val_acc", "max", trials=2, epochs_per_trial=2)
    first = progress.line("a", 1, 0.5, {"running": 2})
    assert re.match(
        r"\[\d\d:\d\d:\d\d 0:00:\d\d left ~\d:\d\d:\d\d\] search demo a epoch 1/2: val_acc 0.5000 \| "
        r"2 running \| best 0.5000 \(a\)$",
        first,
    )
    progress.line("b", 1, 0.7, {"running": 2})
    assert progress.line("a", 2, 0.6, {"running": 1, "done": 1}).endswith("best 0.7000 (b)")


def test_a_repeated_epoch_counts_once_in_a_runs_history(tmp_path):
    """An epoch trained again after a resume appears twice in Tune's progress.csv: the later row is kept,
    per phase (the refit's epochs restart at 1)."""
    log = tmp_path / "progress.csv"
    log.write_text("epoch,phase,val_acc\n1,select,0.1\n2,select,0.2\n2,select,0.25\n1,refit,0.3\n2,refit,0.4\n")
    history = read_history(log)
    assert history[["epoch", "phase", "val_acc"]].values.tolist() == [
        [1, "select", 0.1],
        [2, "select", 0.25],
        [1, "refit", 0.3],
        [2, "refit", 0.4],
    ]


def test_a_repeated_epoch_counts_once_in_the_trials_table():
    """Tune's logs of a trial whose last epoch was trained again after a resume: the table's time and
    best epoch count that epoch once."""
    from types import SimpleNamespace

    import pandas as pd

    from fer_tune.search.outputs import trials_table

    space = load_search_space("vgg")
    logs = pd.DataFrame({"epoch": [1, 2, 2], "val_acc": [0.2, 0.3, 0.3], "epoch_time": [10.0, 10.0, 10.0]})
    result = SimpleNamespace(
        metrics_dataframe=logs,
        metrics={"epoch": 2, "val_acc": 0.3, "trial_id": "abc"},
        config={p.name: None for p in space.params},
        path="/r/ray/trial_000_abc",
        error=None,
    )
    row = trials_table([result], space, max_epochs=2, gpus=1.0, cpus=2.0).iloc[0]
    assert (row.epochs_run, row.best_epoch, row.wall_time_s, row.gpu_hours) == (2, 2, 20.0, round(20 / 3600, 5))


# ------------------------------------------------------------------ the cluster's arithmetic (issue 25)


@pytest.mark.parametrize("k", range(1, 17))
def test_an_auto_share_lets_exactly_k_trials_fit_on_one_gpu(k):
    """1/6 rounded to 0.1667 let only five fit at Ray's 0.0001 granularity; rounding down fits six."""
    from fer_tune.search.cluster import placeable, share_for

    share = share_for(k)
    assert round(share * 10_000) * k <= 10_000 and share > 1 / k - 1e-4
    assert placeable([{"CPU": 64.0, "GPU": 1.0}], cpus=1, gpus=share) == k


def test_a_share_above_one_gpu_is_refused_in_the_yaml_and_on_the_command_line(tmp_path, capsys):
    from fer_tune.cli import main

    path = tmp_path / "two.yaml"
    path.write_text("model: vgg\nresources: {gpus_per_trial: 2}\n")
    with pytest.raises(UserError, match="gpus_per_trial = 2.0 is not allowed; use 0 .* a trial trains on one device"):
        load_search_space(str(path))
    assert main(["--search", "vgg", "--gpus-per-trial", "4", "--smoke"]) == 2
    assert "a trial trains on one device" in capsys.readouterr().err


def test_a_trial_with_no_gpu_share_trains_on_the_cpu_even_where_cuda_is_visible(monkeypatch, chain_data):
    import torch

    from fer_tune.search.cluster import trial_device
    from fer_tune.search.trial_data import TrialData
    from fer_tune.training.config import TrainConfig

    assert trial_device([]) == "cpu" and trial_device(["0"]) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # CUDA_VISIBLE_DEVICES left alone by a share 0
    trainer = TrialData.of(chain_data, None, None).trainer(
        TrainConfig(model="vgg", width=0.0625, epochs=1), device=trial_device([])
    )
    assert trainer.device.type == "cpu"


NODES = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]  # a fake cluster description


@pytest.mark.parametrize(
    ("setting", "trials", "cpus", "gpus", "expected"),
    [
        ("auto", 40, 2, 0.5, 6),  # 4 on the first node (its GPUs), 2 on the second, none on the CPU-only node
        ("auto", 40, 2, 0.25, 10),  # 8 + 4 placeable, but at most a quarter of 40 trials
        ("auto", 8, 2, 0.5, 2),  # a quarter of 8
        ("auto", 2, 2, 0.5, 1),  # at least one
        ("auto", 400, 2, 0.0, 14),  # CPU trials: 8 + 4 + 2
        (3, 40, 2, 0.5, 3),  # a number is taken as it is
    ],
)
def test_max_concurrent_auto_runs_what_the_cluster_places(setting, trials, cpus, gpus, expected):
    from fer_tune.search.cluster import Concurrency

    concurrency = Concurrency(setting, trials, cpus, gpus)
    assert concurrency.limit(NODES) == expected
    assert concurrency.why(NODES).startswith(f"{expected} trial(s) at once (max_concurrent {setting}")


def test_max_concurrent_auto_grows_when_nodes_join(monkeypatch):
    from ray.tune.search import Searcher

    from fer_tune.search import searcher as searcher_module
    from fer_tune.search.cluster import Concurrency

    class Counting(Searcher):
        def suggest(self, trial_id):
            return {"x": 1}

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

    nodes = [{"CPU": 4.0}]
    monkeypatch.setattr(searcher_module, "node_resources", lambda: nodes)
    monkeypatch.setattr(searcher_module, "REREAD_S", 0.0)
    limiter = searcher_module.ClusterConcurrencyLimiter(
        Counting(metric="m", mode="max"), Concurrency("auto", 100, 2, 0)
    )
    assert [limiter.suggest(f"t{i}") is not None for i in range(3)] == [True, True, False]
    nodes.append({"CPU": 4.0})  # the autoscaler added a node
    assert [limiter.suggest(f"u{i}") is not None for i in range(3)] == [True, True, False]


def test_max_concurrent_is_checked_on_the_command_line_and_in_the_yaml(tmp_path, capsys):
    from fer_tune.cli import main

    assert main(["--search", "vgg", "--max-concurrent", "0", "--smoke"]) == 2
    assert "--max-concurrent 0 is not allowed; use auto" in capsys.readouterr().err
    assert main(["--search", "vgg", "--max-concurrent", "many", "--smoke"]) == 2
    assert "invalid value: 'many' (a whole number such as 8, or auto)" in capsys.readouterr().err
    path = tmp_path / "auto.yaml"
    path.write_text("model: vgg\nbudget: {max_concurrent: auto, time_budget_s: 3600}\n")
    budget = load_search_space(str(path)).budget
    assert (budget.max_concurrent, budget.time_budget_s) == ("auto", 3600.0)
    assert load_search_space("vgg_spinal").budget.max_concurrent == "auto"


def test_the_suites_local_ray_listens_on_the_loopback_address_only(ray_local):
    """A local Ray took the machine's network address (and listened on every interface) before."""
    import ray

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}


def test_a_trial_stopped_between_rungs_ran_out_of_time_not_into_asha():
    from fer_tune.search.outputs import trial_status
    from fer_tune.search_folder import SCORED_STATUSES, TIME_BUDGET_STATUS

    rungs = {10, 30, 90}
    assert trial_status({"epoch": 30}, 200, rungs=rungs) == "stopped by ASHA"
    assert trial_status({"epoch": 47}, 200, rungs=rungs) == TIME_BUDGET_STATUS in SCORED_STATUSES
    assert trial_status({"epoch": 200}, 200, rungs=rungs) == "completed"


def test_the_storage_check_skips_a_node_that_died_after_ray_listed_it(ray_local, tmp_path, monkeypatch):
    """Ray lists a SIGKILLed node as alive until its health checks fail; the retraining after such a death
    asked it anyway and failed on TaskUnschedulableError (seen in tests/test_cluster.py)."""
    import ray

    from fer_tune.search import cluster

    gone = {**ray.nodes()[0], "NodeID": "ab" * 28, "NodeManagerAddress": "10.0.0.9"}
    monkeypatch.setattr(cluster, "alive_nodes", lambda: [*ray.nodes(), gone])
    cluster.check_nodes_see(tmp_path / "trials")  # the live node sees it; the gone one is not asked
    assert list((tmp_path / "trials").iterdir()) == []  # its marker file is gone
