"""The gate inside a training script: one call before training, one after.

>>> decision = pretrain_gate(new_data, "ckpt/reference.vdc", reference="data/train_v1")   # doctest: +SKIP
>>> if decision.action == "train":                                                        # doctest: +SKIP
...     fit(model, DataLoader(decision.delta, batch_size=64, shuffle=True))
...     commit_training(decision, "ckpt/reference.vdc")   # the reference grows with what was trained on

For PyTorch Lightning, :class:`VdcGateCallback` does both on its own (``pip install lightning``; Lightning is only
imported when the callback is first used, so vdc_torch works without it)::

    trainer = Trainer(callbacks=[VdcGateCallback("ckpt/reference.vdc")])
    trainer.fit(model, train_loader)   # skip: stops cleanly; train: fits on the delta, then updates the manifest
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from typing import Any

import torch.utils.data

from vdc_torch.decision.gate import Action, DatasetGate, Decision, Policy
from vdc_torch.errors import InvalidParameterError, check_choice
from vdc_torch.search.cascade import MatchConfig

log = logging.getLogger(__name__)

# VdcGateCallback is served by __getattr__ (it needs Lightning), so it is not in __all__.
__all__ = ["ON_SKIP_CHOICES", "ON_TRAIN_CHOICES", "commit_training", "pretrain_gate", "rebuild_loader"]

_GATE_OPTIONS = ("workers", "progress")
ON_SKIP_CHOICES = ("stop", "report")
ON_TRAIN_CHOICES = ("delta", "report")


def _check_gate_options(kwargs: dict[str, Any]) -> None:
    for name, value in kwargs.items():
        if name not in _GATE_OPTIONS:
            raise InvalidParameterError(f"unexpected keyword {name}={value!r}; choices: {', '.join(_GATE_OPTIONS)}")


def _check_path(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InvalidParameterError(f"{name}={value!r} must be a file path (str or os.PathLike)")
    return os.fspath(value)


def _check_type(name: str, value: Any, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise InvalidParameterError(f"{name}={value!r} must be a vdc_torch.{kind.__name__} or None")


def pretrain_gate(
    new_dataset: Any,
    manifest_path: str | os.PathLike[str],
    *,
    reference: Any = None,
    policy: Policy | None = None,
    config: MatchConfig | None = None,
    **kw: Any,
) -> Decision:
    """Decide whether to train on ``new_dataset``, against the manifest at ``manifest_path``.

    * the manifest exists: it is loaded (the reference images are not needed);
    * it does not, but ``reference`` (the data the model was already trained on) is given: the reference is
      fingerprinted and saved to ``manifest_path`` first, so later runs only load it;
    * neither: nothing has been trained on yet, so every readable sample is new: the decision is ``train`` with
      overlap 0 and a reason saying so (duplicates inside ``new_dataset`` are still removed from the delta).

    ``kw`` are passed to :class:`DatasetGate` (``workers``, ``progress``). A manifest that exists but cannot be
    read raises :class:`~vdc_torch.errors.ManifestError`: it is never silently rebuilt.

    >>> decision = pretrain_gate("data/drop_07", "ckpt/reference.vdc")   # doctest: +SKIP
    >>> decision.action, len(decision.delta)                             # doctest: +SKIP
    """
    path = _check_path("manifest_path", manifest_path)
    _check_type("policy", policy, Policy)
    _check_type("config", config, MatchConfig)
    _check_gate_options(kw)
    options = {"policy": policy, "config": config, **kw}
    if os.path.exists(path):
        if reference is not None:
            log.debug("manifest %s exists; reference=%r is not needed and was not read", path, reference)
        return DatasetGate.load(path, **options).check(new_dataset)
    if reference is not None:
        gate = DatasetGate(reference=reference, **options)
        log.info("no manifest at %s yet: fingerprinting the reference (%d samples) and saving it there", path,
                 len(gate))
        gate.save(path)
        return gate.check(new_dataset)
    gate = DatasetGate(None, **options)
    gate.no_reference = f"no reference manifest exists yet at {path!r}"
    return gate.check(new_dataset)  # nothing readable: InsufficientEvidenceError


def commit_training(
    decision_or_dataset: Decision | Any,
    manifest_path: str | os.PathLike[str],
    *,
    force: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> int:
    """After a successful training run, add what was trained on to the manifest at ``manifest_path``.

    Given a :class:`Decision`, its ``delta`` is added (the matched samples are in the manifest already); a
    ``skip`` decision adds nothing unless ``force=True`` (you trained anyway). Given a dataset (a folder path, a
    ``vdc_torch.Dataset`` or any torch dataset), all of it is added. The manifest is created if absent and
    rewritten atomically; returns the number of samples added.

    >>> commit_training(decision, "ckpt/reference.vdc")   # doctest: +SKIP
    31
    """
    path = _check_path("manifest_path", manifest_path)
    if isinstance(decision_or_dataset, Decision):
        decision = decision_or_dataset
        if decision.action == Action.SKIP and not force:
            log.info("decision was skip: nothing trained, so %s is left unchanged (force=True adds the delta)", path)
            return 0
        dataset: Any = decision.delta
        root = decision.new_root
    else:
        dataset, root = decision_or_dataset, ""
    options = {"workers": workers, "progress": progress}
    gate = DatasetGate.load(path, **options) if os.path.exists(path) else DatasetGate(None, **options)
    if len(dataset) == 0:
        log.info("nothing new to add to %s", path)
        if not os.path.exists(path):
            gate.save(path)
        return 0
    if root and not gate.meta.get("reference_root") and len(gate) == 0:
        gate.meta["reference_root"] = os.path.abspath(root)  # the first rows' paths are relative to this root
    added = gate.update(dataset)
    gate.save(path)
    log.info("added %d sample(s) to %s (now %d)", added, path, len(gate))
    return added


# -- PyTorch Lightning ---------------------------------------------------------------------------------------


def _lightning() -> tuple[Any, Any, Any, str]:
    """``(Callback, rank_zero_info, rank_zero_warn, version)`` of the installed Lightning."""
    try:
        import lightning.pytorch as pl
        from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
    except ImportError:
        try:
            import pytorch_lightning as pl  # the standalone package of the same code
            from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
        except ImportError:
            raise ImportError(
                "VdcGateCallback needs PyTorch Lightning: pip install lightning (from a checkout: pip install -e '.[lightning]')"
            ) from None
    return pl.Callback, rank_zero_info, rank_zero_warn, getattr(pl, "__version__", "?")


def rebuild_loader(loader: torch.utils.data.DataLoader, dataset: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` with the batch size, shuffling, workers, collate function, pinning, ... of
    ``loader``. Only the standard samplers can be carried over; a custom one raises ``InvalidParameterError``.

    >>> rebuild_loader(DataLoader(ds, batch_size=32, shuffle=True), decision.delta)   # doctest: +SKIP
    """
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    if not isinstance(loader, DataLoader):
        raise InvalidParameterError(f"train dataloader of type {type(loader).__name__} is not a torch DataLoader")
    batch_size, drop_last, sampler = loader.batch_size, loader.drop_last, loader.sampler
    if batch_size is None and loader.batch_sampler is not None:
        if type(loader.batch_sampler) is not BatchSampler:
            raise InvalidParameterError(
                f"batch_sampler of type {type(loader.batch_sampler).__name__} cannot be rebuilt over the delta; "
                "use on_train='report' or build a DataLoader over decision.delta yourself"
            )
        batch_size, drop_last = loader.batch_sampler.batch_size, loader.batch_sampler.drop_last
        sampler = loader.batch_sampler.sampler
    custom_random = isinstance(sampler, RandomSampler) and (sampler.replacement or sampler._num_samples is not None)
    if type(sampler) not in (RandomSampler, SequentialSampler) or custom_random:
        raise InvalidParameterError(
            f"sampler of type {type(sampler).__name__} cannot be rebuilt over the delta (only the standard "
            "sequential and shuffling samplers can); use on_train='report' or build a DataLoader over "
            "decision.delta yourself"
        )
    shuffle = isinstance(sampler, RandomSampler)
    generator = loader.generator if loader.generator is not None else getattr(sampler, "generator", None)
    wanted = {
        "batch_size": batch_size, "shuffle": shuffle, "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory, "drop_last": drop_last,
        "timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context, "generator": generator,
        "persistent_workers": loader.persistent_workers and loader.num_workers > 0,
        "pin_memory_device": getattr(loader, "pin_memory_device", ""),
        "in_order": getattr(loader, "in_order", True),
    }
    if loader.num_workers > 0:
        wanted["prefetch_factor"] = loader.prefetch_factor
    accepted = inspect.signature(DataLoader.__init__).parameters
    return DataLoader(dataset, **{k: v for k, v in wanted.items() if k in accepted})


@functools.cache
def _make_callback_class() -> type:
    Callback, rank_zero_info, rank_zero_warn, version = _lightning()

    class VdcGateCallback(Callback):
        """Gate ``trainer.fit()``: skip data the model has seen, train only on the novel delta, grow the manifest.

        On fit start the train dataloader's dataset is checked against the manifest (see :func:`pretrain_gate`
        for a missing manifest and ``reference``):

        * ``skip`` and ``on_skip="stop"`` (default): the fit stops cleanly before the first batch
          (``trainer.should_stop``) and the reason is logged; ``on_skip="report"`` logs and trains anyway;
        * ``train`` and ``on_train="delta"`` (default): the train dataloader is rebuilt over ``decision.delta``
          with the same batch size, shuffling, workers and collate function; ``on_train="report"`` only logs.

        On fit end, only if a whole pass over the training data ran (not cut short by ``max_steps``,
        ``limit_train_batches`` or an interrupt), the delta is added to the manifest (``update_manifest=False``
        turns this off); else a warning says so. The decision is kept in ``self.decision``.

        >>> trainer = Trainer(callbacks=[VdcGateCallback("ckpt/reference.vdc", reference="data/v1")])  # doctest: +SKIP
        >>> trainer.fit(model, train_loader)                                                         # doctest: +SKIP
        """

        def __init__(
            self,
            manifest_path: str | os.PathLike[str],
            reference: Any = None,
            on_skip: str = "stop",
            on_train: str = "delta",
            policy: Policy | None = None,
            config: MatchConfig | None = None,
            *,
            update_manifest: bool = True,
            workers: int | None = None,
            progress: bool = False,
        ) -> None:
            super().__init__()
            self.manifest_path = _check_path("manifest_path", manifest_path)
            self.on_skip = check_choice("on_skip", on_skip, ON_SKIP_CHOICES)
            self.on_train = check_choice("on_train", on_train, ON_TRAIN_CHOICES)
            _check_type("policy", policy, Policy)
            _check_type("config", config, MatchConfig)
            if not isinstance(update_manifest, bool):
                raise InvalidParameterError(f"update_manifest={update_manifest!r} must be True or False")
            if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
                raise InvalidParameterError(f"workers={workers!r} must be None or a non-negative integer")
            self.reference = reference
            self.policy = policy
            self.config = config
            self.update_manifest = update_manifest
            self.workers = workers
            self.progress = progress
            self.decision: Decision | None = None
            self.committed = 0
            self._batches = 0

        # -- hooks -------------------------------------------------------------------------------------------
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self._batches = 0
            self.committed = 0
            loader = _train_loader(trainer, version)
            dataset = getattr(loader, "dataset", None)
            if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
                raise InvalidParameterError(
                    f"the train dataloader's dataset ({type(dataset).__name__}) is not a map-style dataset; "
                    "VdcGateCallback can only gate datasets it can index"
                )
            self.decision = decision = pretrain_gate(
                dataset, self.manifest_path, reference=self.reference, policy=self.policy, config=self.config,
                workers=self.workers, progress=self.progress,
            )
            _log_decision(trainer, decision)
            if decision.action == Action.SKIP:
                if self.on_skip == "stop":
                    trainer.should_stop = True
                    rank_zero_info(f"VdcGateCallback: stopping the fit before training. {decision.reason}")
                    if trainer.fit_loop.min_epochs or trainer.fit_loop.min_steps:
                        rank_zero_warn("VdcGateCallback: min_epochs/min_steps are set, so Lightning will train "
                                       "until they are reached despite the skip decision")
                else:
                    rank_zero_info(f"VdcGateCallback (on_skip='report'): training anyway. {decision.reason}")
                return
            if self.on_train == "report":
                rank_zero_info(f"VdcGateCallback (on_train='report'): training on all {len(dataset)} samples. "
                               f"{decision.reason}")
                return
            if len(decision.delta) == 0:
                trainer.should_stop = True
                rank_zero_warn(f"VdcGateCallback: the decision is train but no novel sample is left to train on; "
                               f"stopping. {decision.reason}")
                return
            if trainer.train_dataloader is not None:
                rank_zero_warn("VdcGateCallback: the train dataloader was loaded before fit start (e.g. by "
                               "trainer.estimated_stepping_batches in configure_optimizers); anything sized from "
                               f"it counted {len(dataset)} samples, the delta has {len(decision.delta)}")
            _install_train_loader(trainer, rebuild_loader(loader, decision.delta), version)
            rank_zero_info(f"VdcGateCallback: training on the delta, {len(decision.delta)} of {len(dataset)} "
                           f"samples. {decision.reason}")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self._batches += 1

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            if self.decision is None or not self.update_manifest:
                return
            if self._batches == 0 or getattr(trainer, "interrupted", False):
                rank_zero_info("VdcGateCallback: no training batch ran; the manifest is left unchanged")
                return
            per_pass = _batches_per_pass(trainer)
            if per_pass is not None and self._batches < per_pass:  # max_steps, limit_train_batches, a stop
                rank_zero_warn(f"VdcGateCallback: the fit ran {self._batches} of the {per_pass} batches of one pass "
                               "over its data, so not every sample of the delta was trained on; the manifest is "
                               "left unchanged (call commit_training(callback.decision, manifest_path) once it is)")
                return
            if trainer.is_global_zero:
                self.committed = commit_training(self.decision, self.manifest_path, force=True,
                                                 workers=self.workers, progress=self.progress)
                rank_zero_info(f"VdcGateCallback: added {self.committed} trained-on sample(s) to "
                               f"{self.manifest_path}")

        def state_dict(self) -> dict[str, Any]:
            return {"manifest_path": self.manifest_path, "committed": self.committed}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.committed = int(state_dict.get("committed", 0))  # tolerant of older or partial states

    VdcGateCallback.__module__ = __name__
    return VdcGateCallback


def _batches_per_pass(trainer: Any) -> int | None:
    """Batches of one whole pass over the trainer's train dataloader on this rank (``None``: not known)."""
    try:
        return len(trainer.train_dataloader)
    except TypeError:  # an iterable loader, a collection of loaders: not known
        return None


def decision_metrics(decision: Decision) -> dict[str, float]:
    """The figures of a decision an experiment tracker keeps (``vdc/...``): action (1 train, 0 skip), overlap, and
    the readable, delta, conflict, internal-duplicate, unreadable, new-class and low-quality counts."""
    counts = decision.counts
    return {
        "vdc/train": float(decision.action == Action.TRAIN),
        "vdc/overlap": float(decision.overlap),
        **{f"vdc/{name}": float(counts.get(name, 0))
           for name in ("readable", "delta", "conflicts", "internal_duplicates", "unreadable", "new_classes",
                        "low_quality")},
    }


def _log_decision(trainer: Any, decision: Decision) -> None:
    """Send :func:`decision_metrics` to every logger of the trainer (at the current step; none: nothing)."""
    metrics = decision_metrics(decision)
    for logger in getattr(trainer, "loggers", None) or []:
        logger.log_metrics(metrics, step=int(getattr(trainer, "global_step", 0)))


def _train_loader(trainer: Any, version: str) -> Any:
    """The train dataloader the fit is about to use (without starting its workers)."""
    loader = trainer.train_dataloader  # set when something (e.g. estimated_stepping_batches) already loaded it
    if loader is None:
        # Before the fit loop runs, Lightning has no public accessor for a dataloader passed to trainer.fit();
        # its data source resolves it the same way the loop will (the hook of the module or datamodule, or
        # the object passed in). See Lightning issues #17327 and #21448.
        source = getattr(trainer.fit_loop, "_data_source", None)
        if source is None or not hasattr(source, "dataloader"):
            raise RuntimeError(f"VdcGateCallback cannot find the train dataloader in Lightning {version}; "
                               "gate the dataset with vdc_torch.pretrain_gate before trainer.fit instead")
        loader = source.dataloader()
    if not isinstance(loader, torch.utils.data.DataLoader):
        raise InvalidParameterError(
            f"VdcGateCallback gates one train DataLoader; got {type(loader).__name__}. Gate each dataset with "
            "vdc_torch.pretrain_gate before trainer.fit instead"
        )
    return loader


def _install_train_loader(trainer: Any, loader: Any, version: str) -> None:
    """Make the fit loop use ``loader``: the one place that touches Lightning's (non-public) loop state."""
    fit_loop = trainer.fit_loop
    source = getattr(fit_loop, "_data_source", None)
    if source is None or not hasattr(source, "instance") or not hasattr(fit_loop, "_combined_loader"):
        raise RuntimeError(f"VdcGateCallback(on_train='delta') cannot replace the train dataloader in Lightning "
                           f"{version}; use on_train='report', or gate with vdc_torch.pretrain_gate and pass "
                           "DataLoader(decision.delta, ...) to trainer.fit")
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if fetcher is not None:  # the old loader was already materialised: release its iterator and workers
        fetcher.teardown()
        fit_loop._data_fetcher = None
    source.instance = loader  # also what reload_dataloaders_every_n_epochs will reload
    fit_loop._combined_loader = None


def __getattr__(name: str) -> Any:
    """Build ``VdcGateCallback`` on first access, so importing this module never imports Lightning."""
    if name == "VdcGateCallback":
        return _make_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
