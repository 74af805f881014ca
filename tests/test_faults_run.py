"""Runs that survive bad input and faults: run directories, resume records, damaged checkpoints, file modes.

Fast cases only (tiny modules, no recipe runs); the recipe-level kill-and-resume checks live in tests/test_faults.py.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading

import pytest

from diffrl.train.files import atomic_write_text
from diffrl.train.run import fresh_run_dir

# ------------------------------------------------------------------------------------------------ run directories


def test_fresh_run_dir_never_adopts_an_existing_directory(tmp_path):
    (tmp_path / "run").mkdir()  # empty, e.g. just created by another run that has not written anything yet
    assert fresh_run_dir(tmp_path / "run").name == "run-1"
    assert fresh_run_dir(tmp_path / "run").name == "run-2"


def test_threads_claiming_the_same_directory_get_distinct_ones(tmp_path):
    n = 16
    barrier, claimed = threading.Barrier(n), []

    def claim():
        barrier.wait()
        claimed.append(fresh_run_dir(tmp_path / "run"))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == n
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["run"] + [f"run-{i}" for i in range(1, n)])


def _claim_in_process(path, barrier, queue):
    barrier.wait()
    queue.put(str(fresh_run_dir(path)))


def test_processes_claiming_the_same_directory_get_distinct_ones(tmp_path):
    ctx = multiprocessing.get_context("fork")  # forked: no second import of torch
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(tmp_path / "run", barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert len(set(claimed)) == n and all(p.exitcode == 0 for p in procs)


# ------------------------------------------------------------------------------------------------ file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_new_files_the_mode_open_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "config.yaml", "seed: 0\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_atomic_write_keeps_the_mode_of_a_replaced_file(tmp_path):
    path = atomic_write_text(tmp_path / "notes.txt", "a")
    path.chmod(0o640)
    atomic_write_text(path, "b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "b"
