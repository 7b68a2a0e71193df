"""The end-of-epoch hook of ``train.run_training`` and the exception with which it ends a run early.

A caller that drives the training loop (sweep.py's trials, fed to an Optuna pruner) passes
``on_epoch(epoch, metrics)``; it runs on rank 0 after each epoch's metrics are logged (history.csv, SwanLab)
and its checkpoints written, with the 1-based ``epoch`` and that epoch's history row (``val/acc`` in %,
``val/loss``, ``train/loss``, ...). Raising :class:`StopTraining` there is a clean stop, not a crash.
"""
from __future__ import annotations

from collections.abc import Callable

EpochHook = Callable[[int, dict], None]


class StopTraining(Exception):
    """Raised by an ``on_epoch`` hook to end the run after the epoch just logged.

    ``run_training`` then logs ``summary/<status>_epoch`` to SwanLab, closes the experiment with ``status``
    (SwanLab shows a status it does not know, such as ``pruned``, as aborted), skips the final report and
    re-raises this exception on every rank. best.pt and last.pt of the epochs run stay in the run folder.

    Args:
        status: the run's final state, one word (``pruned``).
        reason: one line for the console and the caller's records.
    """

    def __init__(self, status: str, reason: str = ""):
        super().__init__(reason or status)
        self.status, self.reason = status, reason
