"""``--storage s3://...``: Ray Tune keeps the trials in an S3 bucket (moto's standalone server on
127.0.0.1, as Ray's own tests use); the search folder keeps what a person opens. Search, resume,
retraining and report read everything back through Ray's results and ``pyarrow.fs``."""

from __future__ import annotations

import re
import textwrap

import pandas as pd
import pytest

from fer_tune.errors import UserError
from fer_tune.pipeline import retrain_and_report
from fer_tune.search.retrain_plan import RetrainOptions
from fer_tune.search.run import SearchOptions, run_search

pytestmark = pytest.mark.slow

SPACE = """
    model: vgg
    budget: {max_epochs: 1, grace_period: 1, reduction_factor: 2, num_trials: 2, max_concurrent: 2}
    resources: {gpus_per_trial: 0, cpus_per_trial: 1}
    fixed: {width: 0.0625, batch_size: 64, scheduler: none, optimizer: adam}
    space:
      lr: {loguniform: [1.0e-4, 1.0e-2]}
"""


@pytest.fixture
def s3_bucket():
    """A bucket on a local S3 server: (its URI for --storage, a pyarrow filesystem to look inside)."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        s3 = fs.S3FileSystem(
            endpoint_override=f"{host}:{port}",
            scheme="http",
            access_key="testing",
            secret_key="x",
            allow_bucket_creation=True,
        )
        s3.create_dir("fer-bucket")
        yield f"s3://fer-bucket/searches?endpoint_override={host}:{port}&scheme=http", s3
    finally:
        server.stop()


def test_a_search_keeps_its_trials_in_s3_and_resumes_retrains_and_reports_from_there(
    console, ray_local, chain_data, s3_bucket, tmp_path
):
    from pyarrow import fs

    uri, s3 = s3_bucket
    space = tmp_path / "in_s3.yaml"
    space.write_text(textwrap.dedent(SPACE))
    opts = SearchOptions(results_dir=tmp_path / "r", storage=uri, keep_ray=True)
    outcome = run_search(str(space), chain_data, opts)
    folder = outcome.folder
    assert not (folder / "ray").exists()  # Ray's files are in the bucket, not in the search folder
    stored = s3.get_file_info(fs.FileSelector("fer-bucket/searches/in_s3/ray", recursive=True))
    assert any(f.base_name.startswith("experiment_state") for f in stored)
    assert sum(f.base_name == "best.pt" for f in stored) == 2  # each trial's checkpoint
    trials = pd.read_csv(folder / "trials.csv")
    assert (trials.status == "completed").all() and trials.trial_path.str.startswith("s3://fer-bucket/").all()
    assert (outcome.best_model.is_file()) and any(f"trials kept in {uri}" in line for line in console.messages)

    # the same command again continues from the bucket (the manifest names the storage)
    resumed = run_search(str(space), chain_data, SearchOptions(results_dir=tmp_path / "r", resume=True))
    assert any(
        re.search(r"resuming search in_s3 from fer-bucket/searches/in_s3/ray: 2 trial", line)
        for line in console.messages
    )
    assert resumed.best_score == outcome.best_score
    with pytest.raises(UserError, match=r"keeps its trials in s3://fer-bucket/searches.*not --storage /elsewhere"):
        run_search(str(space), chain_data, SearchOptions(results_dir=tmp_path / "r", storage="/elsewhere"))

    report = retrain_and_report(folder, chain_data, RetrainOptions(top_k=1, seeds=1))
    runs = pd.read_csv(folder / "retrain_runs.csv")
    assert report.is_file() and len(runs) == 1 and pd.read_csv(runs.history.iloc[0]).epoch.tolist() == [1]
    assert s3.get_file_info("fer-bucket/searches/in_s3/retrain").type == fs.FileType.Directory
    assert not (folder / "retrain").exists()
