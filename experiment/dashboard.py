"""SwanLab's local dashboard (``swanlab watch``) as a context manager, plus a headless-Chromium screenshot.

Used by the dashboard test and by ``scripts/dashboard_screenshot.py`` (the README picture); users run
``swanlab watch swanlog`` themselves. Needs ``swanlab[dashboard]`` (in requirements.txt).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


class DashboardError(RuntimeError):
    """The dashboard did not come up (or Chromium is missing); the message says what to install or check."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    """GET ``url`` and decode its JSON body. The dashboard wraps answers as ``{"code", "message", "data"}``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serve_dashboard(log_dir, port: int | None = None, timeout: float = 60.0):
    """Run ``swanlab watch LOG_DIR`` on 127.0.0.1 until the block ends; yields its base URL.

    Waits until ``/api/v1/project`` answers. The server (and anything it spawned) is always stopped,
    also when the block raises. Raises DashboardError when it does not answer within ``timeout`` seconds.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    swanlab = Path(sys.executable).with_name("swanlab")
    command = [str(swanlab) if swanlab.exists() else "swanlab", "watch", str(log_dir), "--host", "127.0.0.1",
               "--port", str(port)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                get_json(f"{url}/api/v1/project", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise DashboardError(f"`{' '.join(command)}` did not serve {url} "
                                         f"(install the extra: pip install 'swanlab[dashboard]'):\n"
                                         f"{log.read().decode(errors='replace')[-2000:]}") from None
                time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def screenshot(url: str, png, width: int = 1600, height: int = 1000, budget_ms: int = 10000) -> Path:
    """Save a PNG of ``url`` rendered by headless Chromium (Debian package ``chromium``).

    Raises DashboardError when Chromium is not installed or writes no file.
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise DashboardError("no Chromium found: install it (Debian/Ubuntu: apt-get install chromium)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", f"--screenshot={png}", url],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
    if not png.exists():
        raise DashboardError(f"Chromium wrote no screenshot of {url}")
    return png
