"""Load test of the web demo: many users at once, real clips, long recordings, corrupt and over-size files.

    python scripts/load_test.py runs/<experiment>                        # 16 clients, 320 requests
    python scripts/load_test.py runs/<experiment> --clients 32 --requests 640 --concurrency 2
    python scripts/load_test.py runs/<experiment> --out load.json        # the report as JSON too

Starts ``app.py RUN`` on a free 127.0.0.1 port (loopback only; nothing else is contacted) with its queue
settings (--concurrency, --queue_size) and limits (--max_mb, --max_minutes), then --clients threads, each
with its own gradio_client.Client, send --requests requests in all (or stop sending after --max_seconds):
one of each kind, the others drawn with fixed weights (seeded):

* ``clip`` (60%): a real recording, GTZAN (30 s) and FSDD (spoken digits, under 1 s) from --clips: answered;
* ``long`` (10%): GTZAN tracks joined into a --long_minutes recording (under --max_minutes): answered;
* ``corrupt`` (15%): not audio (random bytes, a truncated WAV header, an image, an empty file, all named .wav):
  a readable message ("cannot be read as audio"), never a server error;
* ``too_long`` (5%): a recording 10% over --max_minutes: refused with its length before decoding;
* ``oversize`` (10%): a file over --max_mb, posted to Gradio's upload route: refused with HTTP 413
  (gradio_client itself refuses it before sending, so the script posts it with httpx).

Reports per kind the outcomes (answered, readable refusal, HTTP status, queue full, other errors) and the
p50/p95 latency (seconds, on the client: upload + queue + classification + download), the throughput, and the
server's resident memory (VmRSS, sampled every 0.2 s): after a warm-up, after the run, and the peaks of the
run's first and second halves. The bound is on the second half's peak over the first's: a leak grows with
every request, while the allocator keeps the pages the busiest moment needed (concurrent uploads and long
recordings), which shows as growth over a short run that stops. Exits 1 when a request of any kind got an
answer of the wrong kind (a server error, an unreadable message, a clip refused) or the second half's peak
is more than --rss_growth_mb above the first's.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.audio import load_audio  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = {"clip": 0.60, "long": 0.10, "corrupt": 0.15, "too_long": 0.05, "oversize": 0.10}
# What each kind must get back: a classification, or a readable refusal naming the file and the reason.
EXPECTED = {"clip": "answered", "long": "answered", "corrupt": "refused: not audio",
            "too_long": "refused: too long", "oversize": "refused: HTTP 413"}


@dataclass
class Inputs:
    """The files of each kind (see the module docstring)."""
    files: dict[str, list[Path]]

    def pick(self, kind: str, rng: random.Random) -> Path:
        return rng.choice(self.files[kind])


def make_inputs(folder: Path, clips: list[Path], max_mb: float, max_minutes: float, long_minutes: float) -> Inputs:
    """Write the long, too-long, corrupt and over-size files into ``folder``; ``clips`` are used as they are.
    The long recording joins the clips of 10 s or more (at 22.05 kHz) with the project's loader; the too-long
    one is silence at 8 kHz, 10% over ``max_minutes`` (small on disk); the over-size file is random bytes, 1 MB
    over ``max_mb``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rate = 22050
    music = [c for c in clips if sf.info(c).duration >= 10] or clips
    parts, seconds = [], 0.0
    for clip in music * int(np.ceil(long_minutes * 60 / max(sf.info(music[0]).duration, 1))):
        parts.append(load_audio(clip, rate).numpy())
        seconds += len(parts[-1]) / rate
        if seconds >= long_minutes * 60:
            break
    long = folder / f"long-{long_minutes:g}min.wav"
    sf.write(long, np.concatenate(parts)[:int(long_minutes * 60 * rate)], rate, subtype="PCM_16")
    too_long = folder / f"silence-{1.1 * max_minutes:.2f}min.wav"
    sf.write(too_long, np.zeros(int((1.1 * max_minutes * 60 + 1) * 8000), dtype=np.int16), 8000)
    corrupt = {"random-bytes.wav": rng.bytes(50_000), "empty.wav": b"",
               "truncated-header.wav": b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 20,
               "image-named-wav.wav": b"\x89PNG\r\n\x1a\n" + rng.bytes(4_000)}
    for name, payload in corrupt.items():
        (folder / name).write_bytes(payload)
    oversize = folder / "oversize.wav"
    oversize.write_bytes(rng.bytes(int((max_mb + 1) * 2 ** 20)))
    return Inputs(dict(clip=list(clips), long=[long], corrupt=[folder / n for n in corrupt], too_long=[too_long],
                       oversize=[oversize]))


def default_clips() -> list[Path]:
    """Every GTZAN-mini track and 50 FSDD spoken digits (the shared real clips), sorted."""
    gtzan = sorted((SHARED / "gtzan-mini" / "genres_original").rglob("*.wav"))
    fsdd = sorted((SHARED / "fsdd").glob("*.wav"))[:50]
    return gtzan + fsdd


@dataclass
class Result:
    kind: str
    file: str
    outcome: str
    seconds: float
    message: str = ""


def outcome_of(kind: str, err: Exception | None, answer) -> tuple[str, str]:
    """(outcome, message) of one request: ``answered``, ``refused: not audio|too long|HTTP 413``, ``queue full``,
    ``HTTP <status>``, or ``error: <type>`` for anything else (an unreadable message among them)."""
    import httpx
    from gradio_client.exceptions import AppError
    if err is None:
        details = answer[4] if isinstance(answer, (list, tuple)) and len(answer) > 4 else {}
        return ("answered", str(details.get("answer"))) if isinstance(details, dict) and details.get("answer") \
            else ("error: empty answer", repr(answer)[:200])
    message = " ".join(str(err).split())[:300]
    if isinstance(err, httpx.HTTPStatusError):
        status = err.response.status_code
        return ("refused: HTTP 413" if status == 413 else f"HTTP {status}"), message
    if isinstance(err, AppError) or "AppError" in type(err).__name__:
        if "cannot be read as audio" in message:
            return "refused: not audio", message
        if "minutes long; this demo takes recordings up to" in message:
            return "refused: too long", message
        if re.search(r"queue is full", message, re.I):
            return "queue full", message
        return "error: unreadable message", message
    if re.search(r"queue is full", message, re.I):
        return "queue full", message
    return f"error: {type(err).__name__}", message


def one_request(client, url: str, kind: str, path: Path) -> Result:
    """Send ``path`` as a request of ``kind``; time it on the client."""
    import httpx
    from gradio_client import handle_file
    started, answer, err = time.perf_counter(), None, None
    try:
        if kind == "oversize":  # gradio_client refuses it before sending: post it to the upload route itself
            with path.open("rb") as f:
                response = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f)}, timeout=120)
            response.raise_for_status()
            answer = response.json()
        else:
            answer = client.predict(handle_file(str(path)), api_name="/classify")
    except Exception as caught:  # every failure is an outcome to count
        err = caught
    outcome, message = outcome_of(kind, err, answer)
    if kind == "oversize" and err is None:
        outcome, message = "error: over-size upload accepted", str(answer)[:200]
    return Result(kind, path.name, outcome, time.perf_counter() - started, message)


def drive(url: str, inputs: Inputs, clients: int, requests: int, max_seconds: float, seed: int = 0) -> list[Result]:
    """``requests`` requests from ``clients`` threads (one gradio_client.Client each) against ``url``: one of
    each kind of ``inputs``, the others drawn with WEIGHTS, in an order and with files drawn from ``seed``. No
    request is started after ``max_seconds``."""
    from gradio_client import Client
    rng = random.Random(seed)
    kinds = [k for k in WEIGHTS if inputs.files.get(k)]
    drawn = kinds[:requests] + rng.choices(kinds, [WEIGHTS[k] for k in kinds], k=max(requests - len(kinds), 0))
    rng.shuffle(drawn)
    plan = [(kind, inputs.pick(kind, rng)) for kind in drawn]
    lock, results, deadline = threading.Lock(), [], time.monotonic() + max_seconds

    def worker() -> None:
        client = Client(url, verbose=False)
        while time.monotonic() < deadline:
            with lock:
                if not plan:
                    return
                kind, path = plan.pop()
            result = one_request(client, url, kind, path)
            with lock:
                results.append(result)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    return results


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (VmRSS, Linux), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler:
    """VmRSS of ``pid`` sampled every ``every`` seconds on a thread during a block: ``samples`` [(seconds since
    the start, MB)]."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every, self.started = pid, every, time.monotonic()
        self.samples = [(0.0, rss_mb(pid))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.monotonic() - self.started, rss_mb(self.pid)))

    def halves(self) -> tuple[float, float]:
        """The peak of the first and of the second half of the block, MB: a per-request leak raises the second
        above the first; a working set that reached its size (the allocator keeps what the busiest moment took)
        does not."""
        middle = self.samples[-1][0] / 2
        first = [mb for t, mb in self.samples if t <= middle]
        return max(first), max([mb for t, mb in self.samples if t > middle] or first)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Report:
    """What a load run measured: every request's :class:`Result`, the wall time, the server's memory (VmRSS, MB)
    after the warm-up, after the run, and the peaks of the run's first and second halves."""
    results: list[Result]
    wall_seconds: float
    rss_before_mb: float
    rss_after_mb: float
    rss_first_half_peak_mb: float
    rss_second_half_peak_mb: float
    settings: dict = field(default_factory=dict)

    @property
    def rss_growth_mb(self) -> float:
        """How much higher the second half's peak is than the first half's (the bounded figure)."""
        return self.rss_second_half_peak_mb - self.rss_first_half_peak_mb

    def unexpected(self) -> list[Result]:
        """Requests whose outcome is not the one of their kind (EXPECTED)."""
        return [r for r in self.results if r.outcome != EXPECTED[r.kind]]

    def as_dict(self) -> dict:
        kinds = {}
        for kind in WEIGHTS:
            rows = [r for r in self.results if r.kind == kind]
            if not rows:
                continue
            outcomes = {}
            for r in rows:
                outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
            seconds = [r.seconds for r in rows]
            kinds[kind] = dict(requests=len(rows), outcomes=outcomes, p50_s=percentile(seconds, 50),
                               p95_s=percentile(seconds, 95), max_s=max(seconds))
        seconds = [r.seconds for r in self.results]
        return dict(settings=self.settings, requests=len(self.results), wall_s=self.wall_seconds,
                    throughput_per_s=len(self.results) / max(self.wall_seconds, 1e-9),
                    answered=sum(r.outcome == "answered" for r in self.results),
                    unexpected=len(self.unexpected()), p50_s=percentile(seconds, 50), p95_s=percentile(seconds, 95),
                    kinds=kinds, rss_before_mb=self.rss_before_mb, rss_after_mb=self.rss_after_mb,
                    rss_first_half_peak_mb=self.rss_first_half_peak_mb,
                    rss_second_half_peak_mb=self.rss_second_half_peak_mb, rss_growth_mb=self.rss_growth_mb,
                    examples={r.outcome: f"{r.file}: {r.message}" for r in self.results if r.outcome != "answered"})

    def text(self) -> str:
        d = self.as_dict()
        lines = [", ".join(f"{k} {v}" for k, v in d["settings"].items())] if d["settings"] else []
        lines.append(f"{'kind':9} {'requests':>8} {'p50 s':>7} {'p95 s':>7}  outcomes")
        for kind, k in d["kinds"].items():
            lines.append(f"{kind:9} {k['requests']:8d} {k['p50_s']:7.2f} {k['p95_s']:7.2f}  "
                         + ", ".join(f"{n} {o}" for o, n in sorted(k["outcomes"].items())))
        lines.append(f"{'all':9} {d['requests']:8d} {d['p50_s']:7.2f} {d['p95_s']:7.2f}  {d['answered']} answered, "
                     f"{d['unexpected']} unexpected; {d['throughput_per_s']:.2f} requests/s over {d['wall_s']:.0f} s")
        lines.append(f"server memory (VmRSS): {d['rss_before_mb']:.0f} MB after warm-up, {d['rss_after_mb']:.0f} MB "
                     f"after the run; peak {d['rss_first_half_peak_mb']:.0f} MB in the first half of the run, "
                     f"{d['rss_second_half_peak_mb']:.0f} MB in the second ({d['rss_growth_mb']:+.0f} MB)")
        lines += [f"  {outcome}: {example}" for outcome, example in d["examples"].items()]
        return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    """``app.py RUN`` on 127.0.0.1:``port`` with the queue settings and limits of ``args``; waits until it listens.
    Raises RuntimeError with the end of its log when it exits or does not listen within 300 s."""
    command = [sys.executable, str(ROOT / "app.py"), run, "--port", str(port), "--device", "cpu",
               "--max_mb", str(args.max_mb), "--max_minutes", str(args.max_minutes),
               "--concurrency", str(args.concurrency), "--queue_size", str(args.queue_size)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"app.py exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"app.py did not listen on port {port} within 300 s:\n{log.read_text()[-3000:]}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/load_test.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (its best.pt), a .pt checkpoint or an export.py folder, as app.py takes")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--requests", type=int, default=320, help="requests in all (default 320)")
    p.add_argument("--max_seconds", type=float, default=1800, help="no request is started after this (default 1800)")
    p.add_argument("--concurrency", type=int, default=1, help="app.py --concurrency (default 1)")
    p.add_argument("--queue_size", type=int, default=64, help="app.py --queue_size (default 64)")
    p.add_argument("--max_mb", type=float, default=50, help="app.py --max_mb (default 50)")
    p.add_argument("--max_minutes", type=float, default=10, help="app.py --max_minutes (default 10)")
    p.add_argument("--long_minutes", type=float, default=5, help="length of the long recordings (default 5)")
    p.add_argument("--clips", type=Path, nargs="*", help="real recordings (default: GTZAN-mini and 50 FSDD clips)")
    p.add_argument("--rss_growth_mb", type=float, default=100,
                   help="largest rise of the server's peak memory from the run's first half to its second that "
                        "passes (default 100 MB)")
    p.add_argument("--warmup", type=int, default=4, help="requests (clips) before the memory is first read")
    p.add_argument("--seed", type=int, default=0, help="draws of kinds and files")
    p.add_argument("--out", type=Path, help="also write the report as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    clips = args.clips or default_clips()
    if not clips:
        print(f"error: no clips; give --clips or put GTZAN-mini and FSDD under {SHARED}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        inputs = make_inputs(Path(tmp) / "inputs", clips, args.max_mb, args.max_minutes, args.long_minutes)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = start_server(args.run, port, args, Path(tmp) / "app.log")
        try:
            drive(url, Inputs(dict(clip=clips[:args.warmup])), 1, args.warmup, 600, args.seed + 1)
            before = rss_mb(server.pid)
            started = time.monotonic()
            with RssSampler(server.pid) as sampler:
                results = drive(url, inputs, args.clients, args.requests, args.max_seconds, args.seed)
            wall = time.monotonic() - started
            after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
        settings = {k: getattr(args, k) for k in ("clients", "requests", "concurrency", "queue_size", "max_mb",
                                                   "max_minutes", "long_minutes")}
        settings |= dict(cpus=os.cpu_count(), omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"),
                         load_average_1min=round(os.getloadavg()[0], 2))
        report = Report(results, wall, before, after, *sampler.halves(), settings)
    print(report.text())
    if args.out:
        args.out.write_text(json.dumps(report.as_dict(), indent=1))
    if report.unexpected() or report.rss_growth_mb > args.rss_growth_mb:
        print(f"FAILED: {len(report.unexpected())} unexpected outcome(s); the peak memory of the second half is "
              f"{report.rss_growth_mb:.0f} MB above the first half's (bound {args.rss_growth_mb:g} MB)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
