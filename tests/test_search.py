"""The search: Ray Tune + Optuna + ASHA end to end on demo data, its outputs, its YAML validation."""

from __future__ import annotations

import contextlib
import io
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from md_tables import table_rows

from fer_tune.cli import main
from fer_tune.errors import UserError
from fer_tune.search.run import SearchOptions, run_search
from fer_tune.search.searcher import sampler_settings
from fer_tune.search.space import paper_point
from fer_tune.search.space_file import available_spaces, load_search_space

pytestmark = pytest.mark.slow


def _space_file(tmp_path: Path, body: str, name: str = "designed.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@dataclass
class SmokeChain:
    """What `launch.py --search vgg_spinal --smoke` left: its exit code, console, folder and data reads."""

    rc: int
    out: str
    results: Path
    folder: Path
    events: list[str]


@pytest.fixture(scope="module")
def smoke_chain(ray_local, chain_csv, tmp_path_factory) -> SmokeChain:
    """`--search vgg_spinal --smoke` once for this module: base trained first, transferred, 4 trials with
    ASHA, the top 2 retrained over 2 seeds, scored once on PrivateTest, the report; the loader and the
    scoring step instrumented to see when the test split is read."""
    from fer_tune import pipeline
    from fer_tune.data.fer_data import FerData

    results = tmp_path_factory.mktemp("smoke")
    events: list[str] = []
    original_split, original_score = FerData.split, pipeline.score_runs

    def spy_split(self, name):
        events.append(f"split:{name}")
        return original_split(self, name)

    def spy_score(*args, **kwargs):
        events.append("scoring starts")
        return original_score(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setattr(FerData, "split", spy_split)
        patch.setattr(pipeline, "score_runs", spy_score)
        rc = main(
            [
                "--search",
                "vgg_spinal",
                "--smoke",
                "--data",
                str(chain_csv),
                "--results",
                str(results),
                "--max-epochs",
                "2",
            ]
        )  # the README's first command, with shorter trials for the suite
    return SmokeChain(rc, out.getvalue(), results, results / "vgg_spinal-smoke", events)


def test_smoke_console_shows_fer_tune_lines_only(smoke_chain):
    out, folder = smoke_chain.out, smoke_chain.folder
    assert smoke_chain.rc == 0
    assert "Configuration for experiment" not in out and "/tmp/ray/session" not in out
    assert out.count("tensorboard --logdir") == 1 and f"tensorboard --logdir {folder / 'tensorboard'}   (every" in out
    assert f"results: {folder}" in out and f"report: {folder / 'report.md'}" in out
    assert "sampler: Optuna TPE, multivariate with the constant liar, seed 0, the first 10 trials random" in out
    # one progress format for the search and the retraining: clock, elapsed, time left, trial, epoch
    assert re.search(
        r"\[\d\d:\d\d:\d\d \d:\d\d:\d\d left <=\d:\d\d:\d\d\] search vgg_spinal-smoke t\d\d epoch \d/2: "
        r"val_acc \d\.\d{4} \|",
        out,
    )
    assert re.search(
        r"\[\d\d:\d\d:\d\d \d:\d\d:\d\d left ~\d:\d\d:\d\d\] retraining vgg_spinal-smoke w\d-s\d epoch \d/2: "
        r"val_acc \d\.\d{4} \|",
        out,
    )


def test_smoke_reads_privatetest_only_after_scoring_starts(smoke_chain):
    events = smoke_chain.events
    runs = len(pd.read_csv(smoke_chain.folder / "retrain_runs.csv"))
    assert events.count("split:PrivateTest") == 1 + runs  # the scoring's read, one per run; the ensembles none
    assert events.index("split:PrivateTest") > events.index("scoring starts")
    assert "split:Training" in events[: events.index("scoring starts")]


def test_smoke_trains_the_base_first_and_every_trial_says_what_it_took(smoke_chain):
    folder = smoke_chain.folder
    assert "training the base vgg first with the paper's recipe" in smoke_chain.out
    assert (folder / "base" / "best.pt").is_file()
    assert "transfer: loaded 56 tensors, 30 new" in smoke_chain.out
    table = pd.read_csv(folder / "trials.csv")
    # every trial says what it took from the base: VGG's 56 conv/BN tensors, the head's 30 new
    assert (table.transfer_loaded == 56).all() and (table.transfer_new == 30).all()
    assert set(table.transfer_frozen[table.freeze]) == {32} and set(table.transfer_frozen[~table.freeze]) <= {0}


def test_smoke_trials_keep_one_lean_checkpoint_with_their_best_weights(smoke_chain):
    """Each trial keeps one checkpoint (its last): the resumption state and its best epoch's weights,
    weights only (no optimizer state) and without the frozen base tensors; best_model.pt is the best
    trial's best epoch, whole."""
    from fer_tune.training.checkpoint import load_checkpoint

    folder = smoke_chain.folder
    table = pd.read_csv(folder / "trials.csv")
    for row in table.itertuples():
        (checkpoint,) = Path(row.trial_path).glob("checkpoint_*")
        best = load_checkpoint(checkpoint / "best.pt")
        assert set(best) == {"format", "config", "model", "epoch", "val_acc"}  # no optimizer, no scheduler
        assert best["epoch"] == row.best_epoch and best["val_acc"] == pytest.approx(row.best_val_acc)
        state = load_checkpoint(checkpoint / "state.pt")
        assert set(state["model"]) == set(best["model"])  # the frozen base tensors in neither
        assert row.freeze == (len(best["model"]) < 86)  # 56 base + 30 head tensors in the whole model
    kept = load_checkpoint(folder / "best_model.pt")
    top = table.loc[table.best_val_acc.idxmax()]
    assert len(kept["model"]) == 86 and (kept["epoch"], kept["val_acc"]) == (
        top.best_epoch,
        pytest.approx(top.best_val_acc),
    )


def test_smoke_trials_table_starts_with_the_paper_trial(smoke_chain):
    table = pd.read_csv(smoke_chain.folder / "trials.csv")
    assert len(table) == 4 and table.trial.tolist() == [1, 2, 3, 4]
    assert {
        "optimizer",
        "lr",
        "weight_decay",
        "batch_size",
        "freeze",
        "epochs_run",
        "best_val_acc",
        "last_val_acc",
        "status",
        "stopped_early_by_asha",
        "wall_time_s",
        "gpu_hours",
    } <= set(table.columns)
    assert (table.step_time_s > 0).all() and table.peak_memory_gb.isna().all()  # peak memory: CUDA only
    first = table.iloc[0]
    paper = paper_point(load_search_space("vgg_spinal"))  # Table 10: Ranger21, lr 1e-3, wd 5e-4, frozen
    assert {k: first[k] for k in paper} == pytest.approx(paper)
    assert first.scheduler == "none"


def test_smoke_tensorboard_has_one_hparams_table_of_every_run(smoke_chain):
    """What `tensorboard --logdir results/NAME/tensorboard` (the command the search prints) shows, read with
    TensorBoard's own multiplexer: one HParams experiment for the folder whose columns are the space's keys
    plus stage / winner / seed / source_trial / stop, every search trial and retraining run a session with
    all its values, grouped tags, names that say what ran; Ray's own TensorBoard files are not written."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    from fer_tune.search.space_file import load_search_space

    logdir = smoke_chain.folder / "tensorboard"
    assert f"tensorboard --logdir {logdir}" in smoke_chain.out
    assert not list((smoke_chain.folder / "ray").rglob("events.out.tfevents.*"))
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    content = multiplexer.PluginRunToTagToContent("hparams")
    assert "." not in multiplexer.Runs()  # no empty root run
    copies = {tags["_hparams_/experiment"] for tags in content.values() if "_hparams_/experiment" in tags}
    assert len(copies) == 1  # every run carries the same experiment: whichever the plugin reads first
    experiment = plugin_data_pb2.HParamsPluginData.FromString(copies.pop()).experiment
    keys = {p.name for p in load_search_space("vgg_spinal").params}
    assert {h.name for h in experiment.hparam_infos} == keys | {"stage", "winner", "seed", "source_trial", "stop"}
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "best_val_acc"]
    domains = {h.name: h for h in experiment.hparam_infos}
    shown = {h.name for h in experiment.hparam_infos if h.differs}  # the dashboard's 5 default columns
    assert shown == {"optimizer", "scheduler", "lr", "batch_size", "stop"}, shown
    assert all(h.HasField("domain_discrete") or h.HasField("domain_interval") for h in experiment.hparam_infos)

    sessions = {
        run: plugin_data_pb2.HParamsPluginData.FromString(tags["_hparams_/session_start_info"]).session_start_info
        for run, tags in content.items()
        if "_hparams_/session_start_info" in tags
    }
    for run, session in sessions.items():  # every run has every column, each value in its column's domain
        assert set(session.hparams) == set(domains), run
        for name, value in session.hparams.items():
            if domains[name].HasField("domain_discrete"):
                assert value in domains[name].domain_discrete.values, (run, name, value)
    table = pd.read_csv(smoke_chain.folder / "trials.csv")
    winners = pd.read_csv(smoke_chain.folder / "retrain_runs.csv")
    assert len(sessions) == len(table) + len(winners)
    for row in table.itertuples():
        (run,) = [r for r in sessions if r.startswith(f"t{row.trial:02d}-")]
        hparams = sessions[run].hparams
        assert run.startswith(f"t{row.trial:02d}-{row.optimizer}-{row.scheduler}-lr")
        assert keys <= set(hparams) and hparams["lr"].number_value == pytest.approx(row.lr)
        assert hparams["stage"].string_value == "search" and hparams["stop"].string_value == row.status
        assert (hparams["winner"].number_value, hparams["seed"].number_value) == (0, 0)  # the search's seed
        if "freeze" in hparams:  # a switch reads true / false, not 1.0 / 0.0
            assert hparams["freeze"].string_value == str(bool(row.freeze)).lower()
        tags = {t for t in multiplexer.GetAccumulator(run).Tags()["tensors"] if not t.startswith("_hparams_")}
        assert tags == {
            "val/acc", "val/acc_single", "val/loss", "val/f1", "train/acc", "train/loss", "lr", "time/epoch_s",
            "best_val_acc",
        }  # fmt: skip
        best = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in multiplexer.Tensors(run, "best_val_acc")]
        assert len(best) == row.epochs_run and best[-1] == pytest.approx(row.best_val_acc)
    for row in winners.itertuples():
        source = f"t{int(table.loc[table.trial_id == row.trial, 'trial'].iloc[0]):02d}"
        run = f"w{row.winner}-s{row.seed}-from-{source}"
        hparams = sessions[run].hparams
        assert hparams["stage"].string_value == "retrain" and hparams["source_trial"].string_value == source
        assert (hparams["winner"].number_value, hparams["seed"].number_value) == (row.winner, row.seed)
        assert keys <= set(hparams)


def test_smoke_val_acc_card_shows_every_run(smoke_chain):
    """TensorBoard's `val/acc` card: every run is a line from step 0 (the model before its first epoch), and
    every run crosses the y range the card's outlier filter leaves (the frontend's rule: the sorted values
    from position ceil(5% of n-1) to floor(95% of n-1)); a trial stopped after one epoch was a lone low
    point, always left out of that range."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.util import tensor_util

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(smoke_chain.folder / "tensorboard"))
    multiplexer.Reload()
    curves = {
        run: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in multiplexer.Tensors(run, "val/acc")]
        for run, tags in multiplexer.Runs().items()
        if "val/acc" in tags["tensors"]
    }
    values = sorted(v for curve in curves.values() for _, v in curve)
    low, high = values[math.ceil(0.05 * (len(values) - 1))], values[math.floor(0.95 * (len(values) - 1))]
    table = pd.read_csv(smoke_chain.folder / "trials.csv")
    assert {f"t{n:02d}" for n in table.trial} <= {run[:3] for run in curves}
    for run, curve in curves.items():
        if "/" not in run:  # a search trial or a retraining's selection run (a refit phase trains on)
            assert curve[0][0] == 0 and len(curve) >= 2, (run, curve)
        ys = [v for _, v in curve]
        assert min(ys) <= high and max(ys) >= low, (run, curve, (low, high))
    for progress in (smoke_chain.folder / "ray").rglob("progress.csv"):  # every report has the start's columns
        record = pd.read_csv(progress)
        assert record.epoch.tolist() == list(range(1, len(record) + 1)), progress
        assert record.start_val_acc.nunique() == 1 and record.start_val_acc.notna().all(), progress


@contextlib.contextmanager
def _tensorboard_at(logdir: Path):
    """`tensorboard --logdir LOGDIR` on a free local port, as a user starts it; yields its address."""
    import subprocess
    import sys
    import time

    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0",
         "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        for line in server.stdout:  # "TensorBoard 2.21.0 at http://127.0.0.1:PORT/ (Press CTRL+C to quit)"
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
            if found or time.monotonic() - started > 60:
                break
        assert found, "tensorboard did not start"
        yield found.group(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_smoke_hparams_dashboard_reads_every_column_of_every_run_over_http(smoke_chain):
    """Issue 44, as the HParams frontend reads it from TensorBoard's own HTTP API: no empty root run; the 5
    columns it opens on (the first marked as differing, then by name) are the sampled knobs a run's name
    shows and how the run stopped; every string column has its domain (without discrete values it cannot be
    filtered: "cannot process domain type DATA_TYPE_STRING without discrete domain values"); a filter on
    winner or seed keeps every search trial (search rows lacked both, so ticking either dropped them all
    from the parallel-coordinates view); run IDs fit the table's run column (about 16 characters) up to
    what tells them apart: a trial's number, a retraining's winner, seed and source trial."""
    import json
    import time
    import urllib.request

    def get(url: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    runs = len(pd.read_csv(smoke_chain.folder / "trials.csv")) + len(
        pd.read_csv(smoke_chain.folder / "retrain_runs.csv")
    )
    with _tensorboard_at(smoke_chain.folder / "tensorboard") as address:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(get(f"{address}/data/runs")) < runs:
            time.sleep(1)  # TensorBoard reads the logdir in the background
        assert "." not in get(f"{address}/data/runs")
        experiment = get(f"{address}/data/plugin/hparams/experiment", {"experimentName": ""})
        infos = {h["name"]: h for h in experiment["hparamInfos"]}
        shown = sorted(infos, key=lambda name: (not infos[name].get("differs"), name))[:5]  # as the frontend
        assert shown == ["batch_size", "lr", "optimizer", "scheduler", "stop"], infos
        strings = [h for h in infos.values() if h["type"] == "DATA_TYPE_STRING"]
        assert strings and all(h.get("domainDiscrete") for h in strings), strings
        wide = {"minValue": -1e9, "maxValue": 1e9}
        request = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "winner", "filterInterval": wide}, {"hparam": "seed", "filterInterval": wide}],
            "startIndex": 0,
            "sliceSize": 1000,
        }
        groups = get(f"{address}/data/plugin/hparams/session_groups", request)
    assert groups["totalSize"] == runs, groups
    names = {g["hparams"]["stage"]: [] for g in groups["sessionGroups"]}
    for group in groups["sessionGroups"]:
        names[group["hparams"]["stage"]].append(group["name"])
    assert all(re.fullmatch(r"t\d\d-.+", name) for name in names["search"]), names
    assert all(re.fullmatch(r"w\d-s\d-from-t\d\d", name) for name in names["retrain"]), names  # 14 characters
    stages = sorted(g["hparams"]["stage"] for g in groups["sessionGroups"])
    assert stages.count("search") == len(pd.read_csv(smoke_chain.folder / "trials.csv")), stages


def test_smoke_best_config_trains_again(smoke_chain, chain_csv, tmp_path):
    folder = smoke_chain.folder
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert best["model"] == "vgg_spinal" and best["base_checkpoint"].endswith("best.pt")
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in best.values())
    assert (folder / "best_model.pt").is_file()
    rc = main(
        [
            "train",
            "--config",
            str(folder / "best_config.yaml"),
            "--smoke",
            "--data",
            str(chain_csv),
            "--results",
            str(tmp_path),
            "--name",
            "again",
            "--epochs",
            "1",
        ]
    )
    assert rc == 0 and (tmp_path / "train" / "again" / "best.pt").is_file()


def test_smoke_report_winners_and_pictures(smoke_chain):
    folder = smoke_chain.folder
    report = (folder / "report.md").read_text()
    # a smoke run says what it is: demo faces, no paper row beside its headline, seeds named
    assert report.startswith("# vgg_spinal: search, retraining and PrivateTest scores (a smoke run: tiny budget)")
    assert "**Data: demo faces, not FER2013: not comparable with the paper**" in report
    assert "| paper:" not in report and "The paper's VGGSpinalNet (74.45% on FER2013) is left out" in report
    assert re.search(r"\| fer-tune winner \d \(mean \+- std over 2 seeds\) \|", report)
    assert "## Headline: winner" in report and "tensors loaded from the base" in report
    assert "Protocol: **paper**" in report and "PrivateTest" in report
    winners = pd.read_csv(folder / "winners.csv")
    assert winners.winner.tolist() == [1, 2] and (winners.seeds == 2).all()  # the smoke.retrain preset
    # each winner's trial by the name trials.csv, the plots and TensorBoard give it, its Ray id beside it
    trials = pd.read_csv(folder / "trials.csv").astype({"trial_id": str}).set_index("trial_id")
    table = table_rows(report.split("## Winners")[1].split("\n## ")[0])
    header = table[0]
    for row in table[1:]:
        cells = dict(zip(header, row))
        number, ray_id = re.fullmatch(r"t(\d\d) \(([0-9a-f_]+)\)", cells["trial"]).groups()
        assert int(number) == trials.loc[ray_id, "trial"]
        assert all(re.fullmatch(r"\d\.\d\de[-+]\d\d", cells[k]) for k in ("lr", "weight_decay")), cells
    assert len(list((folder / "winners").glob("winner*_seed*.pt"))) == 4
    from PIL import Image

    with Image.open(folder / "confusion_matrix.png") as png:
        assert png.size == (640, 560) and len(set(png.convert("L").getdata())) > 10
    assert (folder / "learning_curves.png").stat().st_size > 5000 and (folder / "search.png").is_file()


def test_smoke_report_figures_are_recomputed_from_the_predictions(smoke_chain):
    from fer_tune.metrics import score

    folder = smoke_chain.folder
    report = (folder / "report.md").read_text()
    predictions = pd.read_csv(folder / "predictions.csv")
    scores = pd.read_csv(folder / "scores.csv")
    for run in scores.itertuples():
        mine = predictions[(predictions.winner == run.winner) & (predictions.seed == run.seed)]
        again = score(mine.label.to_numpy(), mine.prediction.to_numpy())
        assert again.accuracy == pytest.approx(run.accuracy) and again.macro_f1 == pytest.approx(run.macro_f1)
        clean = mine[~mine.in_training]
        assert score(clean.label.to_numpy(), clean.prediction.to_numpy()).accuracy == pytest.approx(
            run.leak_free_accuracy
        )
    for row in pd.read_csv(folder / "winners.csv").itertuples():
        mean = scores[scores.winner == row.winner].accuracy.mean()
        assert row.accuracy_mean == pytest.approx(mean)
        assert f"{mean * 100:.2f}%" in report
        assert row.accuracy_ci_low <= mean <= row.accuracy_ci_high


def test_smoke_manifest_and_leaderboard(smoke_chain):
    from fer_tune.manifest import read_manifest

    manifest = read_manifest(smoke_chain.folder)
    assert (manifest.model, manifest.base, manifest.smoke) == ("vgg_spinal", "vgg", True)
    assert manifest.base_source.endswith("base/best.pt") and manifest.budget["num_trials"] == 4
    assert (manifest.max_concurrent, manifest.storage, manifest.failed_trials) == (2, None, 0)  # the smoke preset
    assert manifest.sampler == sampler_settings(manifest.seed)  # the TPE settings the searcher was built with
    runs = pd.read_csv(smoke_chain.folder / "retrain_runs.csv")  # issue 22: retraining seeds are new seeds
    assert manifest.seed not in set(runs.train_seed) and runs.train_seed.nunique() == runs.seed.nunique() == 2
    assert main(["--report", "--results", str(smoke_chain.results)]) == 0
    board = (smoke_chain.results / "leaderboard.md").read_text()
    header, row, ensemble_row = table_rows(board)  # the headline single model, then the ensemble's own row
    assert row[:2] == ["vgg_spinal-smoke", "vgg_spinal"] and header[-1] == "most important knob (fANOVA, analysis.md)"
    assert re.fullmatch(r"vgg_spinal-smoke: ensemble of \d networks", ensemble_row[0]) and ensemble_row[2] == "-"
    assert row[-1] == ""  # 4 trials are too few for importances (test_analysis has a search with enough)


def test_smoke_winner_predicts_and_exports_as_it_was_scored(smoke_chain, chain_data, tmp_path):
    """The winner the report scored, used the same day: `predict` on the scored faces (as PNG files)
    gives the labels scoring recorded in predictions.csv, and its ONNX export gives them too."""
    cv2 = pytest.importorskip("cv2", reason="the deploy extra (opencv-python-headless) is not installed")
    import numpy as np

    folder = smoke_chain.folder
    checkpoint = folder / "winners" / "winner1_seed0.pt"
    images, _ = chain_data.role("test")
    faces = tmp_path / "faces"
    faces.mkdir()
    for i, face in enumerate(images):
        cv2.imwrite(str(faces / f"{i:03d}.png"), face)
    assert main(["predict", "--checkpoint", str(checkpoint), str(faces), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv").sort_values("file")
    scored = pd.read_csv(folder / "predictions.csv").query("winner == 1 and seed == 0 and stage == 'main'")
    from fer_tune import EMOTIONS

    assert [EMOTIONS.index(label) for label in predicted["label"]] == scored.sort_values("row")["prediction"].tolist()
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "winner.onnx")]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "winner.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images[:, None].astype(np.float32)})[0]
    assert logits.argmax(1).tolist() == scored.sort_values("row")["prediction"].tolist()


def test_smoke_keeps_its_optuna_study_and_analyze_reads_it(smoke_chain, capsys):
    import optuna

    folder = smoke_chain.folder
    study = optuna.load_study(study_name="vgg_spinal-smoke", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert len(study.trials) == 4 and study.trials[0].params["lr"] == pytest.approx(1e-3)  # the paper's trial first
    table = pd.read_csv(folder / "trials.csv")
    for trial, row in zip(study.trials, table.itertuples()):  # Optuna's trial order is Tune's
        assert trial.user_attrs["fer_tune_status"] == row.status  # "stopped by ASHA" is never taken for finished
        truncated = row.status in ("stopped by ASHA", "stopped by the time budget") or row.status.startswith("diverged")
        assert trial.state == (optuna.trial.TrialState.PRUNED if truncated else optuna.trial.TrialState.COMPLETE)
        if not truncated:
            assert trial.value == pytest.approx(row.best_val_acc)  # a finished trial is told its best score
        assert sorted(trial.intermediate_values) == list(range(1, row.epochs_run + 1))
        # the study says what each trial is: Ray's id, trials.csv's number, its best epoch, the paper's trial
        assert (trial.user_attrs["ray_trial_id"], trial.user_attrs["trials_csv_trial"]) == (row.trial_id, row.trial)
        assert trial.user_attrs["best_epoch"] == row.best_epoch
        assert trial.user_attrs["paper_trial"] == (row.trial == 1)
    assert study.metric_names == ["val_acc"]
    assert {k: study.user_attrs[k] for k in ("model", "smoke")} == {"model": "vgg_spinal", "smoke": True}
    assert study.user_attrs["data"].endswith("fer2013.csv") and study.user_attrs["fer_tune_version"]
    # the search wrote its analysis on its own, and the report links it
    assert (folder / "analysis.md").is_file() and "[analysis.md](analysis.md)" in (folder / "report.md").read_text()
    assert main(["--analyze", "vgg_spinal-smoke", "--results", str(smoke_chain.results)]) == 0
    assert f"analysis: {folder / 'analysis.md'}" in capsys.readouterr().out
    text = (folder / "analysis.md").read_text()
    assert "## Hyperparameter importance" in text
    rows = table_rows(text)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert f"- not computed: {complete} of 4 trials finished" in text and ["parameter"] not in [r[:1] for r in rows]
    trials = pd.read_csv(folder / "trials.csv")
    for optimizer, best in trials.groupby("optimizer").best_val_acc.max().items():
        assert any(r[0] == optimizer and r[2] == f"{best:.4f}" for r in rows), optimizer
    assert f"- {trials.epochs_run.sum()} trial-epochs run, of the 8 that 4 trials of 2 epochs each would take" in text
    assert "**Data: demo faces, not FER2013: not comparable with the paper**" in text  # as report.md says it
    for row in trials.itertuples():  # compute per trial
        assert [row.name, row.status, str(row.epochs_run), f"{row.gpu_hours:.4f}", f"{row.cpu_hours:.4f}"] in rows
    assert not (folder / "importance.png").exists()
    for picture in ("slice.png", "parallel_coordinate.png"):
        assert (folder / picture).stat().st_size > 5000
    assert f"plots of the {complete} finished trials" in text


def _dashboard_study(folder: Path, name: str) -> dict:
    """The study as optuna-dashboard's frontend reads it (``GET /api/studies/ID`` of its WSGI app)."""
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna
    from optuna_dashboard import wsgi

    storage = f"sqlite:///{folder / 'optuna.db'}"
    study_id = optuna.load_study(study_name=name, storage=storage)._study_id
    environ: dict = {"PATH_INFO": f"/api/studies/{study_id}", "REQUEST_METHOD": "GET", "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    replies: list[str] = []
    body = b"".join(wsgi(storage)(environ, lambda status, *headers: replies.append(status)))
    assert replies == ["200 OK"], (replies, environ["wsgi.errors"].getvalue()[-3000:])
    return json.loads(body)


def test_smoke_calls_each_trial_by_one_name_everywhere(smoke_chain):
    """`t03` for a search trial, `w1-s0` for a retraining run: the console, trials.csv, retrain_runs.csv,
    report.md, analysis.md, TensorBoard's run names and the Optuna study (user attribute and optuna-dashboard's
    trial note) call each by the same name; the study's note says what data and what objective it holds."""
    folder, out = smoke_chain.folder, smoke_chain.out
    trials = pd.read_csv(folder / "trials.csv")
    names = [f"t{n:02d}" for n in trials.trial]
    assert trials.name.tolist() == names
    runs = pd.read_csv(folder / "retrain_runs.csv")
    runs = runs[runs.stage == "main"]
    assert set(runs.name) == {f"w{w}-s{s}" for w, s in zip(runs.winner, runs.seed)}
    by_id = dict(zip(trials.trial_id.astype(str), names))
    assert runs.source_trial.tolist() == [by_id[str(t)] for t in runs.trial]

    assert set(re.findall(r"\] search vgg_spinal-smoke (\S+) epoch", out)) == set(names)
    assert set(re.findall(r"\] retraining vgg_spinal-smoke (\S+) epoch", out)) == set(runs.name)
    report = (folder / "report.md").read_text()
    winners = table_rows(report.split("## Winners")[1].split("\n## ")[0])
    assert {row[winners[0].index("trial")].split()[0] for row in winners[1:]} == set(runs.source_trial)
    compute = table_rows((folder / "analysis.md").read_text().split("## Compute")[1].split("\n## ")[0])
    assert [row[0] for row in compute[1:]] == names
    tensorboard = {p.name for p in (folder / "tensorboard").iterdir() if p.is_dir()}
    assert {r.split("-")[0] for r in tensorboard if r.startswith("t")} == set(names)
    assert {r for r in tensorboard if r.startswith("w")} == {
        f"{row.name}-from-{row.source_trial}" for row in runs.itertuples()
    }

    study = _dashboard_study(folder, "vgg_spinal-smoke")
    dashboard = {t["number"]: t for t in study["trials"]}
    assert len(dashboard) == len(names)
    for number, name in enumerate(names):
        trial = dashboard[number]
        assert {a["key"]: a["value"] for a in trial["user_attrs"]}["name"] == name
        assert trial["note"]["body"].startswith(f"**{name}** (Ray trial `{trials.trial_id[number]}`)")
    note = study["note"]["body"]
    assert "**Data: demo faces, not FER2013: not comparable with the paper**" in note and "**Smoke run**" in note
    assert "on **PublicTest** (the validation split)" in note
    assert "importances from fewer than 16 finished trials are not to be read" in note


def test_asha_stops_weak_trials_early(ray_local, chain_data, tmp_path):
    space = _space_file(
        tmp_path,
        """
        model: vgg
        metric: val_loss
        budget: {max_epochs: 3, grace_period: 1, reduction_factor: 2, num_trials: 4, max_concurrent: 1}
        resources: {gpus_per_trial: 0, cpus_per_trial: 2}
        fixed: {width: 0.0625, batch_size: 16, scheduler: none}
        space:
          optimizer: {choice: [adam]}
          lr: {choice: [1.0e-7, 0.02, 0.05]}   # 1e-7 keeps val_loss at ln 7; 0.02+ overshoots in epoch 1
        paper_trial: {optimizer: adam, lr: 1.0e-7}
    """,
    )
    outcome = run_search(str(space), chain_data, SearchOptions(results_dir=tmp_path / "r"))
    table = outcome.trials
    assert len(table) == 4
    assert table.stopped_early_by_asha.any(), table[["lr", "epochs_run", "status"]]
    assert (table.epochs_run == 3).any()
    assert (table.loc[table.stopped_early_by_asha, "epochs_run"] < 3).all()


def test_every_shipped_space_loads_and_validates():
    names = available_spaces()
    assert names == sorted(
        ["vgg", "vgg_spinal", "vgg_progressive_spinal", "effnetv2s", "effnetv2s_spinal", "vit_l32", "vit_l32_spinal"]
    )
    for name in names:
        space = load_search_space(name)
        assert space.model == name and space.paper_trial
        assert {"optimizer", "lr", "weight_decay", "batch_size"} <= {p.name for p in space.params}
        assert (space.base is not None) == ("freeze" in {p.name for p in space.params})


@pytest.mark.parametrize(
    "body, message",
    [
        ("model: vgg\nspace: {lr: {loguniform: [1e-3\n", r"line \d+ column \d+: YAML syntax error"),
        ("model: vgg\nbudgett: {max_epochs: 3}\n", "unknown key budgett; allowed: description, model"),
        ("model: vgg\nbudget: {max_epoch: 3}\n", "unknown key budget.max_epoch"),
        (
            "model: vgg\nspace: {lr: {loguniform: [0.1, 0.001]}}\n",
            "space.lr.loguniform: low 0.1 is not below high 0.001",
        ),
        (
            "model: vgg\nspace: {optimizer: {choice: [sgd_nesterov, lion]}}\n",
            "space.optimizer has 'lion'; allowed: sgd_nesterov",
        ),
        ("model: resnet\n", "model = 'resnet' is unknown; allowed: vgg"),
        ("model: vgg\nspace: {learning_rate: {choice: [1]}}\n", "unknown key space.learning_rate"),
        ("model: vgg\nspace: {lr: {normal: [1, 2]}}\n", "space.lr must be one of"),
        ("model: vgg\nspace: {lr: {choice: [0.1]}}\npaper_trial: {lr: 0.5}\n", "paper_trial.lr = 0.5 is not one of"),
        ("model: vgg\nmetric: test_acc\n", "metric = 'test_acc' is unknown"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_broken_space_yaml_names_file_key_and_fix(tmp_path, body, message):
    path = tmp_path / "broken.yaml"
    path.write_text(body)
    with pytest.raises(UserError, match=message) as info:
        load_search_space(str(path))
    assert str(path) in str(info.value)


def test_unknown_search_name_and_nothing_to_resume(tiny_csv, tmp_path, capsys):
    assert main(["--search", "vgg", "--resume", "--smoke", "--data", str(tiny_csv), "--results", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_diverging_trial_a_patience_stop_and_a_fine_tune_stage(console, ray_local, chain_data, tmp_path):
    """One small search and its retraining. lr 1e+6 diverges at epoch 1: recorded, and the search goes on.
    lr 1e-7 leaves the predictions as they are, so the validation accuracy never improves after epoch 1:
    with patience 1 the trial ends after epoch 2 of 6, and its retraining likewise, each saying so.
    The space's fine-tune stage then trains the kept weights on at lr 1e-5, kept and scored apart."""
    from fer_tune.reporting.report import write_report
    from fer_tune.reporting.scoring import score_runs
    from fer_tune.search.retrain import run_retrain
    from fer_tune.search.retrain_plan import RetrainOptions
    from fer_tune.search_folder import PATIENCE_STATUS
    from fer_tune.training.checkpoint import load_checkpoint

    space = _space_file(
        tmp_path,
        """
        model: vgg
        budget: {max_epochs: 6, grace_period: 6, reduction_factor: 2, num_trials: 2, max_concurrent: 2, patience: 1}
        resources: {gpus_per_trial: 0, cpus_per_trial: 1}
        fixed: {width: 0.0625, batch_size: 16, scheduler: none, optimizer: sgd_nesterov}
        space:
          lr: {choice: [1.0e-7, 1.0e+6]}   # the seeded sampler draws 1e+6 for trial 2
        paper_trial: {lr: 1.0e-7}
        finetune: {epochs: 1, lr: 1.0e-5}
    """,
    )
    outcome = run_search(str(space), chain_data, SearchOptions(results_dir=tmp_path / "r"))
    table = outcome.trials.set_index("lr")
    assert table.loc[1e6, "status"] == "diverged at epoch 1"
    calm = table.loc[1e-7]
    assert (calm.status, calm.epochs_run, calm.epochs_saved_by_patience) == (PATIENCE_STATUS, 2, 4)
    assert not calm.stopped_early_by_asha

    runs, winners = run_retrain(outcome.folder, chain_data, RetrainOptions(top_k=1, seeds=1))
    lines = console.messages
    assert runs.stage.tolist() == ["finetune", "main"]
    main_run = runs[runs.stage == "main"].iloc[0]
    assert (main_run.epochs_run, main_run.epochs_saved_by_patience) == (2, 4)
    assert any("then a fine-tune of 1 epochs at lr 1e-05" in line for line in lines)
    tuned = load_checkpoint(outcome.folder / "winners" / "winner1_seed0_finetune.pt")
    kept = load_checkpoint(outcome.folder / "winners" / "winner1_seed0.pt")
    assert tuned["config"]["lr"] == 1e-5 and tuned["config"]["scheduler"] == "none" and tuned["phase"] == "finetune"
    assert kept["phase"] == "select" and kept["config"]["lr"] == 1e-7
    scored = score_runs(runs, chain_data)
    assert set(scored.winners.stage) == {"main", "finetune"}
    report = write_report(outcome.folder, "vgg", runs, scored, {1: winners[0].config}, None).read_text()
    assert "## After the fine-tune stage" in report and "## Headline: winner 1" in report
    assert "early stopping (the budget's patience): 4 trial-epochs saved in the search, 4 epochs" in report


def test_stalled_counts_epochs_since_the_first_best():
    from fer_tune.training.engine import stalled

    assert not stalled([0.1, 0.2, 0.3], 1) and stalled([0.1, 0.3, 0.3], 1) and not stalled([0.1, 0.3, 0.3], 2)
    assert stalled([0.5, float("nan"), 0.4], 2) and not stalled([0.5, 0.4], 0)
    assert stalled([2.0, 1.0, 1.5], 1, mode="min") and not stalled([2.0, 1.0], 1, mode="min")


def test_smoke_ensemble_is_chosen_on_publictest_and_evaluates_predicts_and_exports(smoke_chain, chain_data, tmp_path):
    """Issue 22, part 2: greedy selection starts from the best member, so the ensemble's PublicTest accuracy
    is at least that member's; ensemble.yaml is taken by evaluate (the same PrivateTest figure as the
    report), predict and export (one ONNX graph computing what PyTorch computes)."""
    cv2 = pytest.importorskip("cv2", reason="the deploy extra (opencv-python-headless) is not installed")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the deploy extra (onnxruntime) is not installed")
    from fer_tune import EMOTIONS
    from fer_tune.training.evaluate import evaluate_checkpoint

    folder = smoke_chain.folder
    table = pd.read_csv(folder / "ensembles.csv")
    chosen, average = table.iloc[0], table.iloc[1]
    assert (chosen.combination, average.combination, average.networks) == ("ensemble", "average", 4)
    assert chosen.val_acc >= chosen.best_member_val_acc
    report = (folder / "report.md").read_text()
    assert f"ensemble of {chosen.networks} networks (greedy selection)" in report and "## Headline: winner" in report
    ensemble = folder / "ensemble.yaml"
    scored = evaluate_checkpoint(ensemble, chain_data, "PrivateTest")
    assert scored.ten_crop.accuracy == pytest.approx(chosen.accuracy)
    images, _ = chain_data.role("test")
    faces = tmp_path / "faces"
    faces.mkdir()
    for i, face in enumerate(images[:5]):
        cv2.imwrite(str(faces / f"{i}.png"), face)
    assert main(["predict", "--checkpoint", str(ensemble), str(faces), "--out", str(tmp_path / "p.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv").sort_values("file")
    assert [EMOTIONS.index(label) for label in predicted.label] == scored.predictions[:5].tolist()
    assert main(["export", "--checkpoint", str(ensemble), "--out", str(tmp_path / "ensemble.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images[:, None].astype("float32")})[0]
    assert logits.argmax(1).tolist() == scored.predictions.tolist()
    assert "networks, logits averaged" in (tmp_path / "ensemble.onnx.yaml").read_text()
