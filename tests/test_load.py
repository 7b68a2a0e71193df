"""The demo under load, the CI-sized version of scripts/load_test.py (README, Reliability): 8 concurrent
gradio_client clients, 24 requests of real clips, a long recording, corrupt, too long and over-size files, against
app.py's page served in this process with the small limits of test_app.py (the full run: 16 clients, 320 requests
against app.py in its own process). Every request gets the answer of its kind (no server error, no
unreadable message) and the process's memory does not grow past a bound; requests beyond app.py's queue are
refused at once."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import soundfile as sf

import app
from conftest import GTZAN_MINI, ROOT
from evaluation.classifier import Classifier
from experiment.dashboard import free_port
from scripts import load_test

LIMITS = dict(max_mb=1.0, max_minutes=0.25)  # 1 MB, 15 s
RSS_GROWTH_MB = 100  # bound on the second half's peak memory over the first half's (as the full run's)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Real clips under the limits: three 12 s GTZAN excerpts and five FSDD digits."""
    folder = tmp_path_factory.mktemp("clips")
    out = []
    for genre in ("jazz", "metal", "classical"):
        x, rate = sf.read(GTZAN_MINI / genre / f"{genre}.00001.wav", frames=12 * 22050, dtype="int16")
        sf.write(folder / f"{genre}-12s.wav", x, rate)
        out.append(folder / f"{genre}-12s.wav")
    return out + sorted((ROOT.parent / "shared" / "fsdd").glob("*.wav"))[:5]


def test_eight_clients_get_the_answer_of_each_kind_and_memory_stays_bounded(trained_run, clips, tmp_path):
    clf = Classifier.from_checkpoint(trained_run[0]["run_dir"], "cpu")
    demo = app.build_demo(clf, {}, top_k=2, **LIMITS)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    inputs = load_test.make_inputs(tmp_path / "inputs", clips, long_minutes=0.2, **LIMITS)
    try:
        demo.launch(**app.launch_options(port=port, max_mb=LIMITS["max_mb"]), prevent_thread_lock=True, quiet=True)
        load_test.drive(url, load_test.Inputs(dict(clip=clips[:2])), 1, 2, 120)  # warm-up
        before = load_test.rss_mb(os.getpid())
        with load_test.RssSampler(os.getpid()) as rss:
            results = load_test.drive(url, inputs, clients=8, requests=24, max_seconds=600)
        after = load_test.rss_mb(os.getpid())
    finally:
        demo.close()
    report = load_test.Report(results, rss.samples[-1][0], before, after, *rss.halves())
    assert len(results) == 24, report.text()
    assert report.unexpected() == [], report.text()
    kinds = report.as_dict()["kinds"]
    assert set(kinds) == set(load_test.WEIGHTS)  # every kind was sent
    assert kinds["clip"]["outcomes"] == {"answered": kinds["clip"]["requests"]}
    corrupt = [r for r in results if r.kind == "corrupt"]
    assert all(r.message.startswith(f"{r.file} cannot be read as audio") and "Traceback" not in r.message
               for r in corrupt)
    assert report.rss_growth_mb < RSS_GROWTH_MB, report.text()
    assert np.isfinite(report.as_dict()["p95_s"])


def test_requests_beyond_the_queue_are_refused_at_once(trained_run, clips):
    """app.py's queue settings: with one classification at a time and one place in the queue, five clients
    at once while each classification takes 2 s: two are answered and the others get Gradio's "queue is
    full" without waiting for a turn (without a max_size, Gradio queues without a bound)."""
    clf = Classifier.from_checkpoint(trained_run[0]["run_dir"], "cpu")
    analyze = clf.analyze

    def slow_analyze(*args, **kwargs):
        time.sleep(2.0)
        return analyze(*args, **kwargs)

    clf.analyze = slow_analyze
    demo = app.build_demo(clf, {}, top_k=2, concurrency=1, queue_size=1, **LIMITS)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    try:
        demo.launch(**app.launch_options(port=port, max_mb=LIMITS["max_mb"]), prevent_thread_lock=True, quiet=True)
        results = load_test.drive(url, load_test.Inputs(dict(clip=clips[-1:])), clients=5, requests=5, max_seconds=60)
    finally:
        demo.close()
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count("answered") >= 2 and outcomes.count("queue full") >= 1, outcomes
    assert set(outcomes) == {"answered", "queue full"}, outcomes
    answered = [r.seconds for r in results if r.outcome == "answered"]
    refused = [r.seconds for r in results if r.outcome == "queue full"]
    assert min(answered) >= 2.0 and max(refused) < min(answered), (answered, refused)
