"""Shared fixtures: demo data the project generates itself (never the real FER2013)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from fer_tune.data.demo import DemoSpec, write_demo_csv
from fer_tune.data.fer2013 import load_fer

torch.set_num_threads(2)
# S3 credentials for the local S3 server of tests/test_storage.py, set before the suite's Ray starts (its
# workers write trials there); moto accepts any
for _key, _value in (
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
):
    os.environ.setdefault(_key, _value)

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def real_fer2013() -> Path | None:
    """The real FER2013 file: ``FER2013_CSV``, else the shared copy beside the repository."""
    if os.environ.get("FER2013_CSV"):
        path = Path(os.environ["FER2013_CSV"])
        return path if path.is_file() else None
    for name in ("fer2013.csv", "fer2013.csv.xz"):
        if (SHARED_DATA / name).is_file():
            return SHARED_DATA / name
    return None


@pytest.fixture(scope="session")
def real_csv() -> Path:
    """The real FER2013 file; the test is skipped, saying why, when it is not here."""
    path = real_fer2013()
    if path is None:
        pytest.skip(
            f"real FER2013 not found (FER2013_CSV={os.environ.get('FER2013_CSV', 'unset')}, and no "
            f"fer2013.csv(.xz) in {SHARED_DATA})"
        )
    return path


@pytest.fixture
def console(caplog):
    """fer-tune's console lines of this test (``console.messages``), as the CLI shows them."""
    caplog.set_level(logging.INFO, logger="fer_tune")
    return caplog


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_python():
    """A suite started in the background by a script (`pytest &`) inherits an ignored SIGINT, and the Ctrl-C
    tests would then test nothing: they run with Python's own Ctrl-C handler, as in a terminal."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep demo files and read-only-data caches out of the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """280 / 70 / 70 demo faces: enough for pipelines and searches, fast on 2 cores."""
    return write_demo_csv(tmp_path_factory.mktemp("tiny") / "fer2013.csv", DemoSpec(40, 10, 10, seed=1))


@pytest.fixture(scope="session")
def tiny_data(tiny_csv):
    return load_fer(tiny_csv)


@pytest.fixture(scope="session")
def chain_csv(tmp_path_factory) -> Path:
    """70 / 35 / 35 demo faces: for the whole-chain tests (search, retraining, scoring) that check the
    plumbing, not learning; an epoch takes a third of tiny_csv's."""
    return write_demo_csv(tmp_path_factory.mktemp("chain") / "fer2013.csv", DemoSpec(10, 5, 5, seed=1))


@pytest.fixture(scope="session")
def chain_data(chain_csv):
    return load_fer(chain_csv)


@pytest.fixture(scope="session")
def learn_csv(tmp_path_factory) -> Path:
    """1120 / 280 / 280 demo faces: for the tests that check a model really learns."""
    return write_demo_csv(tmp_path_factory.mktemp("learn") / "fer2013.csv", DemoSpec(160, 40, 40, seed=0))


FAILING_LR = 0.0042  # a trial with exactly this learning rate raises in the suite's Ray (fer_tune.search.trainable)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) shared by the in-process search tests (started once)."""
    import ray

    from fer_tune.compat import local_ray_on_loopback
    from fer_tune.search.trainable import FAIL_ENV

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    local_ray_on_loopback()  # the suite's Ray traffic stays on 127.0.0.1
    os.environ[FAIL_ENV] = f"lr={FAILING_LR}"  # test-only fault, before Ray starts its workers
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def tiny_vit_folder(tmp_path) -> Path:
    """A one-layer ViT saved with save_pretrained (ViT-L/32's patching, 224x224): a local
    'pretrained' folder that loads in a second."""
    from transformers import ViTConfig, ViTModel

    from fer_tune.models.vit import VIT_L32

    small = ViTModel(
        ViTConfig(
            **{**VIT_L32, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
        ),
        add_pooling_layer=False,
    )
    small.save_pretrained(tmp_path / "vit-tiny")
    return tmp_path / "vit-tiny"
