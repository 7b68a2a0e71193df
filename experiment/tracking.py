"""Experiment tracking: SwanLab (cloud, local dashboard or offline) plus ``history.csv`` in the run folder.

The tracker never stops training: any exception from SwanLab (import, init, log, finish) is reported
once per kind of call and the run goes on; every epoch's scalars are also written to ``history.csv``
(one row per epoch), which needs no SwanLab at all.

Mode resolution (``--swanlab_mode``): empty means SwanLab's own (the cloud for a logged-in user, as in the
tutorial; a login prompt on a terminal). When that cannot start (not logged in and no terminal, no
network) the run falls back to ``offline`` and says how to upload or view it. An explicit mode wins over
SwanLab's ``SWANLAB_MODE`` environment variable; an empty ``SWANLAB_MODE`` counts as unset (SwanLab itself
rejects it, even when a mode is passed).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from experiment.checkpoint import write_atomic

MODES = ("", "cloud", "local", "offline", "disabled")
SWANLAB_STATES = ("success", "crashed", "aborted")  # what swanlab.finish accepts


class Tracker:
    """One experiment's metrics. Create on every rank; only ``enabled`` (rank 0) trackers write anything.

    Args:
        run_dir: folder for ``history.csv``.
        history: rows already logged (from a checkpoint, on resume).
    """

    def __init__(self, run_dir, enabled: bool = True, history: list[dict] | None = None):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.history: list[dict] = list(history or [])
        self.swanlab = None  # the module, once a run is live
        self.run_id: str | None = None
        self.mode: str | None = None
        self._reported: set[str] = set()

    # -- SwanLab -------------------------------------------------------------------------------------
    def _report(self, what: str, err: BaseException) -> None:
        if what not in self._reported:
            self._reported.add(what)
            print(f"SwanLab {what} failed ({type(err).__name__}: {err}); training continues and metrics still go "
                  f"to {self.run_dir / 'history.csv'}")

    def start(self, project: str, name: str, config: dict, mode: str = "", log_dir: str = "swanlog",
              run_id: str | None = None, group: str | None = None) -> None:
        """Start (or, with ``run_id``, resume) the SwanLab experiment ``name`` in ``project`` (and in the
        experiment ``group``, e.g. the K folds of one cross-validation, when given).

        ``mode`` is one of ``MODES``. When resuming into a mode that cannot append to an existing
        experiment (local, offline), the earlier epochs are logged again so the new experiment is complete.
        """
        if not self.enabled or mode == "disabled":
            return
        try:
            import swanlab
        except Exception as err:
            self._report("import", err)
            return
        if os.environ.get("SWANLAB_MODE") == "":
            del os.environ["SWANLAB_MODE"]  # SwanLab validates it even when mode= is given, and rejects ""
        kwargs = dict(project=project, name=name, config=config, log_dir=log_dir,
                      id=run_id, resume="allow" if run_id else None, reinit=True, group=group)
        requested = {"": None, "cloud": "online"}.get(mode, mode)
        try:
            run = swanlab.init(mode=requested, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:
            if requested is not None:
                self._report("init", err)
                return
            print(f"SwanLab could not start its default (cloud) mode: {type(err).__name__}: {err}\n"
                  f"  Logging offline to {log_dir}/ instead. Upload later with `swanlab sync {log_dir}/run-<id>` "
                  f"(after `swanlab login`), or run with --swanlab_mode=local and view with `swanlab watch {log_dir}`.")
            try:
                run = swanlab.init(mode="offline", **kwargs)
            except Exception as err2:
                self._report("init (offline)", err2)
                return
        self.swanlab, self.run_id = swanlab, getattr(run, "id", None)
        self.mode = str(getattr(run, "mode", requested or "cloud"))
        if run_id and self.history and self.mode in ("local", "offline"):
            for row in self.history:
                self._swanlab_log(row, int(row["train/epoch"]))

    def _swanlab_log(self, data: dict, step: int) -> None:
        if self.swanlab is not None:
            try:
                self.swanlab.log(data, step=step)
            except Exception as err:
                self._report("log", err)

    # -- logging --------------------------------------------------------------------------------------
    def log_epoch(self, metrics: dict, step: int) -> None:
        """Scalars of one epoch: appended to ``history.csv`` (rewritten atomically) and logged to SwanLab."""
        if not self.enabled:
            return
        self.history.append(dict(metrics))
        self.write_history()
        self._swanlab_log(metrics, step)

    def log(self, data: dict, step: int) -> None:
        """Anything else (summary scalars) to SwanLab only."""
        if self.enabled:
            self._swanlab_log(data, step)

    def log_figure(self, key: str, figure, step: int, caption: str | None = None) -> None:
        """A matplotlib figure as a SwanLab image (shown by the cloud and the local dashboard)."""
        if not self.enabled or self.swanlab is None:
            return
        try:
            self.swanlab.log({key: self.swanlab.Image(figure, caption=caption)}, step=step)
        except Exception as err:
            self._report("image log", err)

    def write_history(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "history.csv"

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.history)

        try:
            write_atomic(path, write)
        except OSError as err:
            print(f"warning: could not write {path} ({err})")

    def finish(self, state: str = "success", error: str | None = None) -> None:
        """Close the SwanLab run (``success``, ``aborted`` on Ctrl-C, ``crashed`` on an error, whose ``error``
        message SwanLab shows). Another state, such as ``pruned`` (a sweep's pruner stopped the run), closes it
        as ``aborted``, the nearest that SwanLab knows; the caller logs what stopped it (``summary/pruned_epoch``)."""
        if self.swanlab is not None:
            try:
                self.swanlab.finish(state=state if state in SWANLAB_STATES else "aborted", error=error)
            except Exception as err:
                self._report("finish", err)
            self.swanlab = None
