"""The base model a transfer search starts from: found (``--base-checkpoint``, a finished base search)
or trained first with its paper recipe, and its architecture (width, activation) taken by the trials."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fer_tune.data.fer_data import FerData
from fer_tune.models import create_model, model_info
from fer_tune.run_folder import folder_lock, train_folder
from fer_tune.search.space import SearchSpace, paper_point
from fer_tune.search.space_file import load_search_space
from fer_tune.search_folder import SearchFolder
from fer_tune.training.single_run import resumable_run, resume_training, run_training
from fer_tune.training.transfer import BaseWeights, architecture_of_base, load_base, transfer_weights

if TYPE_CHECKING:
    from fer_tune.search.run import SearchOptions

log = logging.getLogger(__name__)


def resolve_base(space: SearchSpace, data: FerData, opts: SearchOptions, folder: Path) -> BaseWeights | None:
    """The weights a transfer search starts from.

    Order: ``--base-checkpoint``; the best model of a finished search of the base
    (``results/<base>/best_model.pt``); else the base is trained first with its paper recipe.
    """
    if space.base is None:
        if opts.base_checkpoint:
            log.info(f"note: {space.model} trains from scratch; --base-checkpoint is ignored")
        return None
    if opts.base_checkpoint:
        source = Path(opts.base_checkpoint)
    else:
        base_name = f"{space.base}-smoke" if opts.smoke else space.base
        source = opts.results_dir / base_name / SearchFolder.BEST_MODEL
        if not source.is_file():
            source = _train_base(space, data, opts, folder)
    base = load_base(source, space.model)
    log.info(f"base model: {source} ({base.config.get('model')})")
    return base


def adopt_base_architecture(space: SearchSpace, base: BaseWeights) -> SearchSpace:
    """Fix the base's width / activation for every trial (a transfer needs the same architecture),
    then check on one model that the base fits, and log what a transfer moves."""
    inherited = architecture_of_base(model_info(space.model).options, base.config)
    for key, value in inherited.items():
        if key in space.fixed and space.fixed[key] != value:
            log.info(
                f"note: {space.path} fixes {key} {space.fixed[key]!r}, but the base was trained with {value!r}; "
                f"the trials use {value!r}"
            )
    space = space.with_fixed(**inherited)
    config = space.train_config(paper_point(space))
    model = create_model(space.model, width=config.width, activation=config.activation)
    report = transfer_weights(model, base.state, freeze=True)
    log.info(f"base {base.source}: {report.summary()} (frozen only in trials with freeze on)")
    return space


def _train_base(space: SearchSpace, data: FerData, opts: SearchOptions, folder: Path) -> Path:
    base_space = load_search_space(space.base)
    if opts.smoke:
        base_space = base_space.for_smoke()
    base_dir = folder / "base"
    best = base_dir / "best.pt"
    if (base_dir / "last.pt").is_file():  # trained before, finished or stopped by a Ctrl-C: continue it
        with folder_lock(base_dir, "train run"):
            config, state = resumable_run(base_dir)
            resume_training(base_dir, config, state, data)
        return best
    config = base_space.train_config(paper_point(base_space))
    config = config.replace(
        seed=opts.seed, **{k: v for k, v in space.fixed.items() if k in ("width", "pretrained_path")}
    )
    log.info(
        f"no finished '{space.base}' search under {opts.results_dir} and no --base-checkpoint: training the "
        f"base {space.base} first with the paper's recipe{' (smoke preset)' if opts.smoke else ''} "
        f"({config.epochs} epochs, {config.optimizer}, "
        f"lr {config.lr:g}) into {base_dir}; the per-epoch lines below show how long each epoch takes"
    )
    with train_folder(base_dir):
        run_training(config, data, base_dir)
    return best


# ------------------------------------------------------------------ outputs
