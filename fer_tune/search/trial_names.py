"""What Tune's trials are called: their creation order (the number trials.csv, run names and plots use),
their one name (``t03`` / ``w1-s0``) and their folder names."""

from __future__ import annotations

from pathlib import Path

from fer_tune.search_folder import retrain_label, trial_label


def creation_number(trial) -> int | None:
    """A Tune trial's creation order (1 = the first), read from its experiment tag."""
    number = str(trial.experiment_tag).split("_", 1)[0]
    return int(number) if number.isdigit() else None


def trial_name(trial) -> str:
    """A trial's one name, as every file and line of fer-tune shows it: ``t03`` in a search (its trials.csv
    number), ``w1-s0`` in a retraining (winner 1, seed 0); its Ray id where Tune gave it no number."""
    config = trial.config or {}
    if "winner" in config and "seed" in config:
        return retrain_label(config["winner"], config["seed"])
    return trial_label(creation_number(trial), trial.trial_id)


def trial_dirname(trial) -> str:
    """Short trial folder names in creation order, ``trial_001_<id>`` (Ray's default spells out the config)."""
    number = creation_number(trial)
    return f"trial_{number:03d}_{trial.trial_id}" if number is not None else f"trial_{trial.trial_id}"


def trial_number(path: str) -> int | None:
    """The creation order of a trial from its folder name (1 = the first trial)."""
    parts = Path(path).name.split("_")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
