"""Every PNG fer-tune draws is readable at 100% (no text under 9 pt, a layout engine that keeps labels
apart) and says in its title when it shows demo faces (issue 44)."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pytest
from matplotlib.layout_engine import ConstrainedLayoutEngine

from fer_tune.data.describe import figure_note
from fer_tune.reporting import plots

NOTE = figure_note(demo=True)


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures fer-tune saves, kept as they were when saved (``plt.close`` is what save_figure calls last)."""
    figures, close = [], plt.close
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    for figure in figures:
        close(figure)


def _texts_under(fig, points: float) -> list[str]:
    fig.canvas.draw()  # tick labels exist only once drawn
    small = []
    for ax in fig.axes:
        ticks = [*ax.get_xticklabels(which="both"), *ax.get_yticklabels(which="both")]
        legend = ax.get_legend().get_texts() if ax.get_legend() else []
        for text in [*ticks, *ax.texts, *legend, ax.xaxis.label, ax.yaxis.label]:
            if text.get_text() and text.get_visible() and text.get_fontsize() < points:
                small.append(f"{text.get_text()!r} {text.get_fontsize()} pt")
    return small


def test_every_figure_is_readable_and_names_demo_data(drawn, tmp_path):
    curves = {f"winner {w} seed {s}": list(np.linspace(0.3, 0.8, 6)) for w in (1, 2) for s in (0, 1)}
    plots.plot_confusion(np.eye(7, dtype=int) * 5 + 1, tmp_path / "c.png", "winner 1, PrivateTest", NOTE)
    plots.plot_curves(curves, tmp_path / "l.png", "retraining", "accuracy", curves, {"winner 1 seed 0": 3}, NOTE)
    plots.plot_search(
        {f"t{n:02d}": [0.2, 0.4, 0.5][:n] for n in (1, 2, 3)}, tmp_path / "s.png", "vgg", {"t01"}, "t03", NOTE
    )
    plots.plot_importances({"fANOVA": {"lr": 0.7, "batch_size": 0.3}}, tmp_path / "i.png", 20, NOTE)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-5, 1e-2, log=True) + t.suggest_int("batch_size", 32, 128), 8)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        axes = optuna.visualization.matplotlib.plot_slice(study)
    plots.save_figure(plots.readable_optuna_plot(axes, 8, 8), tmp_path / "o.png", NOTE)
    assert len(drawn) == 5 and all((tmp_path / f"{name}.png").stat().st_size > 0 for name in "clsio")
    for fig in drawn:
        assert NOTE in fig.get_suptitle(), fig.get_suptitle()
        assert not _texts_under(fig, plots.SMALLEST_PT)
    assert all(isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine) for fig in drawn)  # Optuna's too


def test_a_figure_of_fer2013_says_nothing_of_demo_data(drawn, tmp_path):
    plots.plot_confusion(np.eye(7, dtype=int), tmp_path / "c.png", "winner 1, PrivateTest", figure_note(demo=False))
    assert "demo" not in drawn[0].get_suptitle()


def test_a_trial_has_one_colour_in_search_png_and_slice_png(drawn, tmp_path):
    """t02's line in search.png and t02's points in slice.png share its colour (Optuna colours the slice by
    a colour scale of trial numbers, which search.png cannot match); the slice's legend names the trials."""
    plots.plot_search({f"t{n:02d}": [0.2, 0.4, 0.5][:n] for n in (1, 2, 3)}, tmp_path / "s.png", "vgg", set(), "t03")
    lines = {line.get_label(): line.get_color() for line in drawn[0].axes[0].get_lines()}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-5, 1e-2, log=True) + t.suggest_int("batch_size", 32, 128), 3)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        axes = optuna.visualization.matplotlib.plot_slice(study)
    names = {t.number: f"t{t.number + 1:02d}" for t in study.trials}
    fig = plots.readable_optuna_plot(axes, 3, 8, names)
    for ax in axes:
        (points,) = [c for c in ax.collections if len(c.get_offsets()) == 3]
        assert [tuple(c) for c in points.get_facecolor()] == [plots.trial_colour(names[n]) for n in range(3)]
    for name in ("t01", "t02", "t03"):
        assert tuple(matplotlib.colors.to_rgba(lines[name])) == plots.trial_colour(name)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["t01", "t02", "t03"]
    assert not [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    fig.canvas.draw()
    for ax in axes:  # every panel keeps the readable ticks: slanted, never under 9 pt
        assert all(t.get_rotation() == 30 for t in ax.get_xticklabels() if t.get_text()), ax.get_xlabel()
        assert not [t for t in ax.get_yticklabels() if t.get_text() and t.get_fontsize() < plots.SMALLEST_PT]


def _extents(fig) -> list[tuple[str, object]]:
    """Every visible text of ``fig`` drawn on the canvas (a tick outside its axis' view is not), with its box."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = list(fig.texts)  # the suptitle among them
    for ax in fig.axes:
        texts += [ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (low, high) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            if not axis.get_visible():  # a twin's hidden copy of the shared axis
                continue
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if low <= tick.get_loc() <= high:
                    texts += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text() and t.get_visible()]


def test_parallel_coordinates_labels_every_axis_without_overprinting(drawn, tmp_path):
    """parallel_coordinate.png (issue 44): a learning-rate range inside one decade has labelled ticks (it
    had one), no two labels overprint each other, the colour bar clears the last axis' labels, and the labels
    Optuna sets on each axis have a ground (the lines that cross the axis ran through them)."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))

    def objective(trial):
        trial.suggest_categorical("optimizer", ["adam", "ranger21", "sgd_nesterov"])
        trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
        return trial.suggest_float("lr", 2e-4, 1.5e-3, log=True) * 100 + trial.suggest_int("batch_size", 32, 128) / 1e3

    study.optimize(objective, 6)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study, target_name="val_acc (best)")
    fig = plots.readable_optuna_plot(ax, 6, 1.6 * 4 + 5)
    boxes = _extents(fig)
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            assert not box_a.overlaps(box_b), (a, b)
    logs = [axis for axis in fig.axes if axis.get_yscale() == "log"]
    assert len(logs) == 2
    for axis in logs:
        low, high = sorted(axis.get_ylim())
        shown = [t.label2.get_text() for t in axis.yaxis.get_major_ticks() if low <= t.get_loc() <= high]
        assert len([s for s in shown if s]) >= 2, shown
    categories = [a for a in fig.axes[1:] if a.get_label() != "<colorbar>" and a.get_yscale() != "log"]
    grounds = [t.label2.get_bbox_patch() for a in categories for t in a.yaxis.get_major_ticks() if t.label2.get_text()]
    assert grounds and all(g is not None and g.get_alpha() >= 0.8 for g in grounds)
    assert not _texts_under(fig, plots.SMALLEST_PT)
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    plots.save_figure(fig, tmp_path / "parallel.png", NOTE)
