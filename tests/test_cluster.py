"""A search on a two-node Ray cluster simulated on this machine: trials land on both nodes."""

from __future__ import annotations

import textwrap

import pytest

from fer_tune.search.run import SearchOptions, run_search

pytestmark = [pytest.mark.slow, pytest.mark.replaces_ray]


def test_search_spreads_trials_over_two_nodes(chain_data, tmp_path):
    """The suite's Ray gives way to the cluster (this test runs last: nothing needs it again)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        space = tmp_path / "two_nodes.yaml"
        space.write_text(
            textwrap.dedent("""
            model: vgg
            budget: {max_epochs: 1, grace_period: 1, reduction_factor: 2, num_trials: 2, max_concurrent: 2}
            resources: {gpus_per_trial: 1, cpus_per_trial: 1}   # no GPU in this cluster: asks for 0
            fixed: {width: 0.0625, batch_size: 64}
            space:
              lr: {loguniform: [1.0e-3, 1.0e-2]}
        """)
        )
        outcome = run_search(str(space), chain_data, SearchOptions(results_dir=tmp_path / "r", log=lambda s: None))
        nodes = set(outcome.trials.node)
        assert len(outcome.trials) == 2 and (outcome.trials.status == "completed").all()
        assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}, nodes
        assert worker.node_id in nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
