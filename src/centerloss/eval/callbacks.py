"""Pair verification during training, as a callback of the engine (which never imports ``eval``).

``Trainer(cfg, callbacks=[VerificationCallback(cfg.verify, data_root)])`` scores the configured pairs every
``verify.every`` steps and at the end, on rank 0, and writes ``verify_log.csv`` (and TensorBoard's
``verify/*``) in the run folder. It reads the network through ``trainer.net`` and puts it back in training
mode afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FIELDS = ["step", "epoch", "accuracy", "accuracy_std", "auc", "eer", "protocol"]


class VerificationCallback:
    """Verify ``cfg.pairs`` (an LFW-style pairs file) with the network being trained.

    Args:
        cfg: a :class:`centerloss.engine.config.VerifyConfig` (pairs, root, folds, every, pca_dim, subfolds,
            batch_size).
        data_root: where the crops live when ``cfg.root`` is not set (the training folder).
    """

    def __init__(self, cfg: Any, data_root: str | None = None) -> None:
        self.cfg = cfg
        self.root = cfg.root or data_root
        self.pairs = None
        self.results: list[dict[str, Any]] = []

    def _load_pairs(self) -> Any:
        from .protocols import read_lfw_pairs

        if self.pairs is None:
            pairs = read_lfw_pairs(self.cfg.pairs)
            self.pairs = pairs.folds(*self.cfg.folds) if self.cfg.folds is not None else pairs
        return self.pairs

    def on_step_end(self, trainer: Any, row: dict[str, Any]) -> None:
        every = self.cfg.every
        if (every and trainer.step % every == 0) or trainer.step == trainer.max_steps:
            self.run(trainer)

    def run(self, trainer: Any) -> dict[str, Any] | None:
        """Verify now (rank 0 works, every rank waits); returns the row on rank 0."""
        from ..engine.distributed import barrier
        from .features import extract_features
        from .verification import evaluate_pairs

        out = None
        if trainer.info.is_main:
            pairs = self._load_pairs()
            items = pairs.items()
            root = self.root or trainer.cfg.data.root  # a resumed run may learn its data folder from the checkpoint
            feats = extract_features(trainer.net, items, root, batch_size=self.cfg.batch_size,
                                     device=str(trainer.device), progress=False)
            trainer.net.train()
            fa, fb = pairs.gather(items, feats)
            single = np.unique(pairs.fold_ids).size < 2
            res = evaluate_pairs(fa, fb, pairs.issame, pairs.fold_ids, self.cfg.pca_dim,
                                 subfolds=self.cfg.subfolds if single else None, seed=trainer.cfg.runtime.seed)
            out = {"step": trainer.step, "epoch": trainer.step // trainer.steps_per_epoch,
                   "accuracy": res.accuracy_mean, "accuracy_std": res.accuracy_std, "auc": res.auc,
                   "eer": res.eer, "protocol": res.protocol}
            trainer.run.log("verify", out, FIELDS)
            self.results.append(out)
        barrier(trainer.info)
        return out
