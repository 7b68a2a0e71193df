"""Screenshot of the web demo after a prediction, for the README (docs/app.png), driven in headless Chromium.

    python train.py --data_root=../shared/gtzan-mini/genres_original --num_epochs=12 --pretrained=False \
        --resize=128 --learning_rate=1e-3 --warmup_epochs=1 --lr_step_size=0 --mixup_alpha=0 \
        --swanlab_mode=disabled --out_dir=/tmp/runs --experiment_name=gtzan-mini
    pip install --target /tmp/pwlib playwright       # the browser driver; deliberately not in requirements.txt
    PYTHONPATH=/tmp/pwlib python scripts/app_screenshot.py /tmp/runs/gtzan-mini \
        ../shared/gtzan-mini/genres_original/classical/classical.00001.wav \
        ../shared/gtzan-mini/genres_original/metal/metal.00001.wav

Starts app.py's page on a free loopback port, opens it in the system's headless Chromium (Debian package
``chromium``; Playwright's own browser download is not needed), uploads the clip (several clips are joined
into one recording, so the time plot shows where each part is), presses Classify, waits for the result
and saves a full-page PNG. Every request the page makes is recorded: one to anything but 127.0.0.1 is
refused and reported, and the script then fails, because the page must work offline.
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app  # noqa: E402
from evaluation.classifier import Classifier  # noqa: E402
from experiment.dashboard import free_port  # noqa: E402
from experiment.model_card import metrics_summary, read_metrics  # noqa: E402


def recording(clips: list[str], folder: Path) -> Path:
    """The clip itself, or the clips joined end to end (at the first clip's rate, mono) as one WAV."""
    if len(clips) == 1:
        return Path(clips[0])
    parts = [sf.read(c, dtype="float32", always_2d=True) for c in clips]
    rate = parts[0][1]
    if any(r != rate for _, r in parts):
        raise SystemExit("error: clips to join must share one sample rate")
    path = folder / ("+".join(Path(c).stem for c in clips) + ".wav")
    sf.write(path, np.concatenate([x.mean(1) for x, _ in parts]), rate)
    return path


def drive(url: str, audio: Path, png: Path, browser: str, width: int) -> list[str]:
    """Upload ``audio``, press Classify, wait for the answer, save ``png``; returns refused external URLs."""
    from playwright.sync_api import sync_playwright
    external = []

    def only_loopback(route):
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost") or route.request.url.startswith("data:"):
            return route.continue_()
        external.append(route.request.url)
        return route.abort()

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
        page = chromium.new_page(viewport=dict(width=width, height=900))
        page.route("**/*", only_loopback)
        page.goto(url)
        page.locator("input[type=file]").first.set_input_files(str(audio))
        page.get_by_role("button", name="Classify").click()
        page.get_by_text("most probable").wait_for(timeout=120_000)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1500)  # the plots' images decode and the bars animate
        page.screenshot(path=str(png), full_page=True)
        chromium.close()
    return external


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder (or export folder) to serve")
    parser.add_argument("clips", nargs="+", help="audio file(s); several are joined into one recording")
    parser.add_argument("--out", default="docs/app.png", help="PNG to write (default docs/app.png)")
    parser.add_argument("--width", type=int, default=1400, help="browser window width, pixels")
    parser.add_argument("--browser", default=shutil.which("chromium") or "/usr/bin/chromium",
                        help="Chromium executable (default: chromium on PATH)")
    args = parser.parse_args()
    clf = Classifier.load(args.model, "cpu")
    demo = app.build_demo(clf, clf.meta.get("metrics") or metrics_summary(read_metrics(args.model)), top_k=5)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        audio = recording(args.clips, Path(tmp))
        demo.launch(**app.launch_options(port=port), prevent_thread_lock=True, quiet=True)
        try:
            png = Path(args.out).resolve()
            png.parent.mkdir(parents=True, exist_ok=True)
            external = drive(f"http://127.0.0.1:{port}/", audio, png, args.browser, args.width)
        finally:
            demo.close()
    print(f"wrote {png} (the page after classifying {audio.name})")
    if external:
        raise SystemExit("error: the page requested resources outside 127.0.0.1 (refused):\n  " + "\n  ".join(external))
    print("the page made no request outside 127.0.0.1")


if __name__ == "__main__":
    main()
