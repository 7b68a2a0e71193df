"""Where a study lives: Optuna's own storages, with heartbeats so that a killed worker's trial is failed and retried.

Which storage (Optuna 5's documentation, "Easy Parallelization" tutorial and the FAQ "How can I solve the error
that occurs when performing parallel optimization with SQLite3?"):

- several processes on one machine: ``JournalStorage`` with ``JournalFileBackend`` (an append-only operation log,
  file-locked, a stable format since Optuna 4.0) or an ``RDBStorage``; the FAQ "would never recommend SQLite3
  for parallel optimization" (no ``SELECT ... FOR UPDATE``, so two workers may pop the same queued trial;
  "database is locked" under concurrency; broken on NFS) and points to ``JournalFileBackend`` instead.
- several machines: ``RDBStorage`` on a database server (PostgreSQL, MySQL), since file locks over NFS may fail.

So the default is a journal file, ``runs/<study>/study.journal``: no server, and safe for many workers on one
machine. ``--storage=URL`` (``postgresql://user:pass@host/db``, ``mysql+pymysql://...``, or ``sqlite:///file.db``
for a single worker) opens an ``RDBStorage``; any other ``--storage`` value is a journal file path.

Heartbeats: every running trial records one every ``heartbeat`` seconds; a RUNNING trial silent for twice that
is failed by the next worker that asks for a trial, and ``RetryHeartbeatStaleTrialCallback`` (Optuna 4.9+; it
replaced ``RetryFailedTrialCallback``) queues a copy with the same parameters. ``RDBStorage`` has this built in;
Optuna's ``JournalStorage`` has no heartbeat, so :class:`HeartbeatJournalStorage` implements Optuna's heartbeat
interface (``optuna.storages._heartbeat.BaseHeartbeat``, the base RDBStorage uses) on it, storing the beat as a
trial system attribute. Optuna's own ``Study.optimize`` then runs the heartbeat thread, fails stale trials and
calls the callback, on either storage.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

JOURNAL_NAME = "study.journal"
MAX_RETRY = 3  # a trial whose worker dies is run again at most this many times
BEAT = "heartbeat"  # system attribute: seconds since the epoch of the trial's last heartbeat


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with Optuna's heartbeat: ``record_heartbeat`` writes the time as a trial system
    attribute (one journal line per beat); a RUNNING trial whose last beat (or start) is more than
    ``grace_period`` seconds old is stale. Clocks are this machine's: a journal file is for one machine.

    Args:
        backend: the journal (e.g. ``JournalFileBackend(path)``).
        heartbeat_interval: seconds between beats (int >= 1).
        grace_period: seconds of silence before a trial is stale (default 2 x interval, as RDBStorage).
        stale_trial_callback: called with (study, the failed trial) for each stale trial failed.
    """

    def __init__(self, backend, heartbeat_interval: int, grace_period: int | None = None,
                 stale_trial_callback=None):
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 2 * heartbeat_interval
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, BEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running
                if now - t.system_attrs.get(BEAT, t.datetime_start.timestamp()) > self.grace_period]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.stale_trial_callback


def is_url(storage: str) -> bool:
    """Whether ``--storage`` names a database (an SQLAlchemy URL) rather than a journal file."""
    return "://" in storage


def open_storage(storage: str, heartbeat: int | None = None):
    """The Optuna storage ``storage`` names: an RDBStorage for a URL, else a journal file (created with its folder).

    Args:
        storage: ``dialect://...`` URL or a journal file path.
        heartbeat: seconds between heartbeats of running trials (None: no heartbeat, for read-only use).
    Raises:
        ImportError: the URL's database driver is not installed (e.g. psycopg2 for postgresql://).
    """
    retry = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are "experimental" since Optuna 2.9
        if heartbeat is not None:
            retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        if is_url(storage):
            engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}  # Optuna FAQ's advice
            return RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=heartbeat,
                              heartbeat_stale_trial_callback=retry)
        path = Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path))
        if heartbeat is None:
            return JournalStorage(backend)
        return HeartbeatJournalStorage(backend, heartbeat, stale_trial_callback=retry)


def describe(storage: str) -> str:
    """``storage`` fit to print and save: a URL's password replaced by ***."""
    if not is_url(storage):
        return str(storage)
    from sqlalchemy.engine import make_url
    try:
        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: RDBStorage will say so
        return storage.split("@")[-1]


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's ``fail_stale_trials`` (fail RUNNING trials without a recent heartbeat, then retry them), quiet
    about being experimental."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
