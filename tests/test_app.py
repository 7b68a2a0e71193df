"""app.py: the Gradio demo served on a free loopback port and called through its own client
(gradio_client) with a real GTZAN clip: the page gives Classifier's probabilities exactly, refuses
uploads over its size and duration limits before decoding them, turns bad files into readable messages,
loads nothing from the internet, and the server is always stopped."""
from __future__ import annotations

import base64
import io
import json
import socket
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app  # the script at the repository root (conftest puts it on sys.path)
from conftest import GTZAN_MINI
from evaluation.classifier import Classifier
from experiment.dashboard import free_port
from experiment.model_card import metrics_summary, read_metrics

CLIP = GTZAN_MINI / "jazz" / "jazz.00001.wav"  # 30 s, 22.05 kHz, 16 bit: 1.3 MB
LIMITS = dict(max_mb=1.0, max_minutes=0.25)      # 1 MB, 15 s


@pytest.fixture(scope="module")
def clf(trained_run):
    return Classifier.from_checkpoint(trained_run[0]["run_dir"], "cpu")


@pytest.fixture(scope="module")
def served(clf, trained_run):
    """The demo on a free 127.0.0.1 port: (url, client, demo); stopped after the module, port checked closed."""
    metrics = metrics_summary(read_metrics(trained_run[0]["run_dir"]))
    demo = app.build_demo(clf, metrics, top_k=2, **LIMITS)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    try:
        demo.launch(**app.launch_options(port=port, max_mb=LIMITS["max_mb"]), prevent_thread_lock=True, quiet=True)
        yield url, Client(url, verbose=False), demo
    finally:
        demo.close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory):
    """The first 12 s of the real GTZAN clip (0.5 MB, under both limits)."""
    path = tmp_path_factory.mktemp("clips") / "jazz-12s.wav"
    x, rate = sf.read(CLIP, frames=12 * 22050, dtype="int16")
    sf.write(path, x, rate)
    return path


def png_size(plot: dict) -> tuple[int, int]:
    """Pixel size of a gr.Plot value as the client receives it (a base64 data URL of the matplotlib figure)."""
    assert plot["type"] == "matplotlib"
    with Image.open(io.BytesIO(base64.b64decode(plot["plot"].split(",", 1)[1]))) as im:
        return im.size


def test_the_page_gives_classifiers_probabilities(served, clf, excerpt):
    url, client, demo = served
    assert demo.server_name == "127.0.0.1" and not demo.share
    label, timeline, segments, spectrogram, details, status = client.predict(handle_file(str(excerpt)),
                                                                             api_name="/classify")
    expected = clf.classify(excerpt)
    got = np.array([details["probabilities"][n] for n in clf.label_names])
    np.testing.assert_allclose(got, expected.probabilities.numpy(), atol=1e-6, rtol=0)
    top2 = clf.predict(excerpt, top_k=2)
    assert label["label"] == top2[0][0] and [c["label"] for c in label["confidences"]] == [n for n, _ in top2]
    np.testing.assert_allclose([c["confidence"] for c in label["confidences"]], [p for _, p in top2], atol=1e-6)
    windows = np.array(details["window_probabilities"])
    assert details["windows"] == expected.num_windows == len(windows) == len(details["window_starts"]) > 40
    np.testing.assert_allclose(windows.sum(1), 1, atol=1e-5)
    assert details["seconds"] == pytest.approx(12.0) and details["window_starts"][0] == 0
    assert png_size(timeline)[0] > 300 and png_size(spectrogram)[0] > 300
    assert excerpt.name in status and f"**{top2[0][0]}**" in status
    # the segments under the heat map are Classifier.timeline's, and they tile the recording
    expected_segments = clf.timeline(excerpt).segments
    assert segments["headers"] == app.SEGMENT_HEADERS and len(segments["data"]) == len(expected_segments)
    for row, s in zip(segments["data"], expected_segments):
        assert row[:3] == [round(s.start, 2), round(s.end, 2), s.label] and row[4] == s.windows
    assert segments["data"][0][0] == 0 and segments["data"][-1][1] == pytest.approx(12.0)
    assert details["answer"] == top2[0][0] and details["temperature"] == clf.applied_temperature


def test_uploads_over_the_limits_are_refused_before_decoding(served, clf, tmp_path, monkeypatch):
    url, client, _ = served
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks the page's limit
        client.predict(handle_file(str(CLIP)), api_name="/classify")
    big = tmp_path / "too-big-for-the-demo.wav"
    big.write_bytes(CLIP.read_bytes())
    with big.open("rb") as f:  # and the server refuses it too, without storing it
        assert httpx.post(f"{url}gradio_api/upload", files={"files": f}).status_code == 413
    assert not list(Path(app.get_upload_folder()).rglob(big.name))

    def never(*args, **kwargs):
        raise AssertionError("decoded a refused file")
    monkeypatch.setattr(clf, "analyze", never)
    long = tmp_path / "twenty-seconds.wav"  # 20 s at 8 kHz: 0.3 MB, over the 15 s limit
    sf.write(long, np.zeros(20 * 8000, dtype=np.int16), 8000)
    with pytest.raises(AppError, match=r"twenty-seconds.wav is 0.3 minutes long; this demo takes recordings up "
                                       r"to 0.25 minutes \(app.py --max_minutes\)"):
        client.predict(handle_file(str(long)), api_name="/classify")
    monkeypatch.setattr(app.sf, "info", never)  # the size is checked first, from os.stat alone
    with pytest.raises(app.UploadRefused, match=r"too-big-for-the-demo.wav is 1.3 MB; this demo takes files up "
                                                r"to 1 MB \(app.py --max_mb\)"):
        app.check_upload(str(big), 1.0, 10, str(tmp_path))


def test_bad_files_get_a_readable_message(served, tmp_path):
    _, client, _ = served
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 20)
    with pytest.raises(AppError) as err:
        client.predict(handle_file(str(bad)), api_name="/classify")
    message = str(err.value)
    assert message.startswith("not-audio.wav cannot be read as audio") and "Use WAV, FLAC, OGG or MP3" in message
    assert "Traceback" not in message and app.get_upload_folder() not in message
    with pytest.raises(app.UploadRefused, match="only files uploaded through this page"):
        app.check_upload(str(bad), 50, 10, str(tmp_path / "uploads"))  # a path outside Gradio's upload folder


def test_the_page_is_offline_and_describes_the_model(served, clf, trained_run):
    url, _, demo = served
    with urllib.request.urlopen(url, timeout=10) as page:
        html = page.read().decode()
    with urllib.request.urlopen(f"{url}theme.css", timeout=10) as css:
        theme = css.read().decode()
    assert "fonts.googleapis" not in html + theme and "url('static/fonts/" in theme  # fonts come from the app
    config = json.loads(urllib.request.urlopen(f"{url}config", timeout=10).read())
    assert config["analytics_enabled"] is False
    facts = next(c["props"]["value"] for c in config["components"]
                 if c["type"] == "markdown" and "**Labels**" in str(c["props"].get("value")))
    val = read_metrics(trained_run[0]["run_dir"])["val"]
    assert ", ".join(clf.label_names) in facts and "18 train, 6 val tracks" in facts
    assert f"**val top-1**: {100 * val['top1']:.1f}%" in facts and val["protocol"] in facts


def test_command_line_defaults_are_safe():
    args = app.parse_args(["runs/x"])
    assert (args.host, args.share, args.max_mb, args.max_minutes) == ("127.0.0.1", False, 50, 10)
    options = app.launch_options(args.host, args.port, args.share, args.max_mb)
    assert options["server_name"] == "127.0.0.1" and options["share"] is False
    assert options["max_file_size"] == 50 * 2 ** 20
    with pytest.raises(SystemExit):
        app.parse_args(["runs/x", "--max_mb=0"])
