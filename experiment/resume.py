"""Stopping and continuing a run: where it stands (:class:`ResumeState`, what a checkpoint records of the
loop) and Ctrl-C (:class:`StopRequest`: finish the step, save last.pt, exit; ``--resume`` continues there).

Under torchrun a Ctrl-C may reach one rank only, so a rank never acts on its own flag: the flags are summed
at the loop's next regular sync (train.py's ``sync_steps``), and when any rank asked, every rank stops
there together (:class:`Stopped`).
"""
from __future__ import annotations

import math
import signal
import threading
from dataclasses import asdict, dataclass, field

from experiment.engine import EpochTotals


def no_best() -> dict:
    """The best validation result before any epoch: every real one beats it."""
    return dict(val_acc=-1.0, val_loss=math.inf, epoch=0)


@dataclass
class ResumeState:
    """Where a run stands.

    ``epoch``: completed epochs (the 0-based index of the epoch in progress); ``step``: batches done of that
    epoch (not 0 only after Ctrl-C mid-epoch); ``totals``: its running totals, None until it starts;
    ``best``: the best validation result so far, dict(val_acc %, val_loss, epoch 1-based); for a task chosen on
    another metric that metric's key instead of val_acc (multilabel: val_mAP %, experiment/tasks.py).
    """
    epoch: int = 0
    step: int = 0
    totals: EpochTotals | None = None
    best: dict = field(default_factory=no_best)

    @classmethod
    def restore(cls, checkpoint: dict | None) -> ResumeState:
        """From a checkpoint's ``epoch``, ``step``, ``accum`` (the totals, a dict or None) and ``best``,
        as every version of train.py wrote them; a fresh run's state without a checkpoint."""
        if checkpoint is None:
            return cls()
        accum = checkpoint["accum"]
        return cls(checkpoint["epoch"], checkpoint["step"], EpochTotals(**accum) if accum else None,
                   dict(checkpoint["best"]))

    def epoch_totals(self) -> EpochTotals:
        """The totals of the epoch in progress: those of an interrupted epoch, else new zeros."""
        if self.totals is None:
            self.totals = EpochTotals()
        return self.totals

    def record_best(self, epoch: int, val_acc: float, val_loss: float, key: str = "val_acc") -> bool:
        """Keep epoch ``epoch`` (1-based) as the best when its score ``val_acc`` (top-1, or the task's selection
        metric stored under ``key``, e.g. val_mAP) is higher, or equal at a lower loss. Returns whether it is
        the new best."""
        improved = (val_acc, -val_loss) > (self.best.get(key, -1.0), -self.best["val_loss"])
        if improved:
            self.best = {key: val_acc, "val_loss": val_loss, "epoch": epoch}
        return improved

    def next_epoch(self) -> None:
        """The epoch in progress is complete: continue at step 0 of the next one."""
        self.epoch, self.step, self.totals = self.epoch + 1, 0, None

    def checkpoint_fields(self) -> dict:
        """This state under a checkpoint's keys ``epoch``, ``step``, ``accum``, ``best``, in plain types
        (checkpoints load with ``weights_only``)."""
        return dict(epoch=self.epoch, step=self.step, accum=asdict(self.totals) if self.totals else None,
                    best=dict(self.best))


class Stopped(KeyboardInterrupt):
    """Every rank agreed to stop after a Ctrl-C (on any of them) and last.pt holds where the run stands."""


class Terminated(BaseException):
    """SIGTERM stopped training: torchrun sends it to the other ranks when one fails, a cluster scheduler when
    it preempts the job. A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    The message says what the last checkpoint holds and how to continue."""


class StopRequest:
    """Ctrl-C (SIGINT) asks the training loop to stop after the current step; a second Ctrl-C stops at once.
    SIGTERM stops at once with :class:`Terminated` (``advice``: how to continue, added to its message), unless
    the run is ending already (``ending()``: it then waits for the run's own cleanup).

    ``install()`` sets the handlers (a no-op outside the main thread, where Python allows none),
    ``request()`` is what Ctrl-C does (also how another rank's request is taken on), ``restore()`` puts the
    previous handlers back. ``announce``: print what happens (rank 0).
    """

    def __init__(self, announce: bool = True, advice: str = ""):
        self.requested, self.announce, self.advice = False, announce, advice
        self._previous, self._ending = {}, False

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint),
                              signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm)}
        return self

    def request(self) -> None:
        self.requested = True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def ending(self) -> None:
        """The run is on its way out (saving, closing SwanLab, leaving the process group): SIGTERM no longer
        interrupts that. torchrun sends SIGTERM to the other ranks as soon as one exits."""
        self._ending = True

    def _on_sigterm(self, signum, frame) -> None:
        if self._ending:
            return
        raise Terminated(f"stopped by SIGTERM (torchrun sends it to every rank when one fails; a cluster scheduler "
                         f"when it preempts the job). {self.advice}".strip())

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.request()
        if self.announce:
            print("\nInterrupt: stopping after this step and saving last.pt (Ctrl-C again to quit now)", flush=True)
