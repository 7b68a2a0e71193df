"""Faults of one rank under torchrun (gloo, 2 CPU processes): Ctrl-C that reaches one rank only, kill -9 of
one rank mid-epoch, and a rank that stops answering (the process-group timeout)."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, make_tree, tiny_overrides
from experiment.checkpoint import load_checkpoint
from test_resume_ddp import free_port

SYNC_EVERY = 3  # micro-batches between the ranks' syncs: a rank's Ctrl-C is agreed at the next multiple


def start_torchrun(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """``torchrun --nproc_per_node=2 train.py args`` with stdout and stderr going to ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                 f"--master_port={free_port()}", str(ROOT / "train.py"), *args],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def rank_pid(torchrun: subprocess.Popen, rank: int, timeout: float = 120) -> int:
    """The pid of the worker with RANK=``rank`` among torchrun's children (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under torchrun")


def wait_until(predicate, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"torchrun ended early ({proc.returncode}):\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for torchrun; a hang past ``timeout`` kills every process of its session and fails."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"torchrun hung for {timeout} s:\n{log.read_text()[-4000:]}") from None
    return log.read_text()


def exit_codes(report: str) -> dict[int, int]:
    """{rank: exit code} of the failed ranks in torchrun's failure report."""
    return {int(r): int(c) for r, c in re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*exitcode\s*: (-?\d+)", report)}


def last_pt(run: Path) -> dict | None:
    try:
        return load_checkpoint(run / "last.pt")
    except FileNotFoundError:
        return None


def test_torchrun_ctrl_c_on_one_rank_then_kill_9_of_one_rank(tmp_path):
    """1. SIGINT to rank 1 alone in epoch 2: the ranks agree at the next sync (every SYNC_EVERY steps),
    rank 0 writes last.pt there, and both exit 130 (before, a rank synced on its own flag alone and the
    ranks' collectives no longer matched; and rank 1 could exit while rank 0 was saving, so torchrun killed it).
    2. The run resumed under torchrun, rank 1 killed with SIGKILL mid-epoch: rank 0 exits with an error that
    names the failure and the way on, within the process-group timeout; last.pt is intact.
    3. --resume (one process) completes the run."""
    import train
    root = make_tree(tmp_path / "audio", per_class=10)  # 24 training clips: 12 per rank, 6 steps of 2 per epoch
    run = tmp_path / "runs" / "tiny"
    args = tiny_overrides(tmp_path, root, batch_size=2, num_epochs=5, sync_every=SYNC_EVERY, dist_timeout=60,
                          confusion_every=0)

    log = tmp_path / "ctrl-c.log"
    proc = start_torchrun(args, tmp_path, log)
    wait_until(lambda: (run / "history.csv").exists(), proc, log)  # epoch 1 done: in epoch 2 now
    os.kill(rank_pid(proc, 1), signal.SIGINT)
    interrupted = time.monotonic()
    out = finish(proc, log, timeout=120)
    print(f"\nSIGINT to rank 1: both ranks exited {time.monotonic() - interrupted:.1f} s later")  # README figure
    assert exit_codes(out) == {0: 130, 1: 130}, out[-4000:]
    assert out.count("Interrupted in epoch") == 1 and f"--resume={run}" in out
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] in (1, 2) and state["step"] % SYNC_EVERY == 0  # where the ranks synced, not mid-group
    assert state["epoch"] == len(pd.read_csv(run / "history.csv"))

    log = tmp_path / "kill-9.log"
    proc = start_torchrun([f"--resume={run}"], tmp_path, log)
    before = state["epoch"]
    wait_until(lambda: (last_pt(run) or {}).get("epoch", 0) > before, proc, log)  # a resumed epoch is saved
    time.sleep(0.3)
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    killed = time.monotonic()
    out = finish(proc, log, timeout=90)
    print(f"kill -9 of rank 1: rank 0 exited {time.monotonic() - killed:.1f} s later")  # README figure
    assert time.monotonic() - killed < 60  # the process-group timeout (--dist_timeout=60) bounds the wait
    assert exit_codes(out) == {0: 1, 1: -9} or exit_codes(out) == {0: 143, 1: -9}, out[-4000:]
    # rank 0 says what happened, whichever came first: the broken connection or torchrun's SIGTERM
    assert re.search(r"error: (rank 0 of 2 lost the other ranks during epoch \d, step \d+ \(.*\)|stopped by SIGTERM)",
                     out), out[-4000:]
    assert f"{run / 'last.pt'} holds the last saved state; continue with --resume={run}" in out
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] > before

    summary = train.main([f"--resume={run}", "--swanlab_mode=disabled"])
    assert pd.read_csv(run / "history.csv")["train/epoch"].tolist() == [1, 2, 3, 4, 5]
    assert summary["summary/best_epoch"] >= 1


def rank_waits_for_a_silent_peer(rank: int, port: int, out: str) -> None:
    """One of two processes (forked): rank 1 answers the data-preparation wait after 3 s, then nothing;
    rank 0 waits for it, then runs an all-reduce that rank 1 never joins. Writes what rank 0 saw to ``out``."""
    from experiment import distributed
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    d = distributed.setup("cpu", timeout=2.0)
    if rank == 1:
        time.sleep(3.0)
        distributed.wait_for_main(d)
        time.sleep(8.0)  # alive but silent: a hung rank
        os._exit(0)
    started = time.monotonic()
    distributed.wait_for_main(d)  # 3 s, longer than the timeout: data preparation may take that
    waited = time.monotonic() - started
    started = time.monotonic()
    try:
        with distributed.peer_failures(d, lambda: "epoch 1, step 4", "advice here"):
            distributed.all_reduce_sum([1.0], d)
        result = dict(error=None)
    except distributed.PeerFailure as err:
        result = dict(error=str(err))
    Path(out).write_text(json.dumps(dict(result, waited=waited, seconds=time.monotonic() - started)))
    os._exit(0)


def test_a_rank_that_stops_answering_fails_the_others_after_the_process_group_timeout(tmp_path, capfd):
    out, port = tmp_path / "rank0.json", free_port()
    context = multiprocessing.get_context("fork")  # no new interpreter: torch is imported already
    ranks = [context.Process(target=rank_waits_for_a_silent_peer, args=(r, port, str(out))) for r in (0, 1)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=60)
        assert p.exitcode == 0
    seen = json.loads(out.read_text())
    with capfd.disabled():  # README figure
        print(f"\na silent rank: rank 0 failed {seen['seconds']:.1f} s into the all-reduce (timeout 2 s)")
    assert seen["waited"] > 2.5  # wait_for_main outlasts the 2 s timeout
    assert 1.9 < seen["seconds"] < 6.0
    assert seen["error"].startswith("rank 0 of 2 lost the other ranks during epoch 1, step 4 (Timed out waiting")
    assert "process-group timeout of 2 s (--dist_timeout). advice here" in seen["error"]
    assert "error: rank 0 of 2 lost the other ranks" in capfd.readouterr().err  # printed at once
