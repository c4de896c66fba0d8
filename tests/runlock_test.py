"""tfwd.runlock: one writer per run directory, and what a killed writer leaves (training end to end:
tests/training_test.py)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tfwd import runlock, runs


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    run_dir = str(tmp_path / "run")
    with runlock.RunLock(run_dir):
        assert open(os.path.join(run_dir, runs.LOCK)).read() == f"{os.getpid()}\n"
        with pytest.raises(runs.RunError) as info:
            with runlock.RunLock(run_dir):
                pass
        assert str(info.value) == (
            f"{run_dir} is being trained by another process (pid {os.getpid()}); wait for it to finish or stop it, "
            "then rerun."
        )
    with runlock.RunLock(run_dir):  # released on exit
        pass


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
            import sys
            from tfwd import runlock
            lock = runlock.RunLock(sys.argv[1]).__enter__()
            print("locked", flush=True)
            sys.stdin.read()
            """
            ),
            str(run_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(runs.RunError, match=f"pid {holder.pid}"):
        runlock.RunLock(str(run_dir)).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (run_dir / runs.LOCK).read_text() == f"{holder.pid}\n"  # the file stays; the kernel freed the lock
    with runlock.RunLock(str(run_dir)):
        assert (run_dir / runs.LOCK).read_text() == f"{os.getpid()}\n"


def test_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(runs.RunError, match=r"Cannot write the run directory .*: Not a directory. Choose a writable"):
        runlock.RunLock(str(blocker / "run")).__enter__()


def test_only_a_killed_trainings_temporaries_are_removed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "ckpt-2_temp").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-2_temp" / "part-00000-of-00001.index").write_text("")
    orphans = [
        run / ".config.json.k2j4.tmp.json",
        run / ".history.csv.a1b2.tmp.csv",
        run / ".model.keras.x9y8.tmp.keras",
        run / ".test_predictions.npz.q7.tmp.npz",
        run / ".results.json.z3.tmp.json",
        run / "checkpoints" / ".latest.json.c4.tmp.json",
    ]
    kept = [
        run / runs.LOCK,
        run / "notes.txt",
        run / ".notes.txt.a.tmp.txt",  # not a file training writes
        run / ".pc_all_test.p123.abc.tmp" / "pc.npz",  # an analysis' working folder
        run / "checkpoints" / "ckpt-1.index",
        run / "checkpoints" / "latest.json",
    ]
    for path in orphans + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    removed = runlock.remove_stale_temporaries(str(run))
    assert sorted(removed) == sorted(map(str, orphans + [run / "checkpoints" / "ckpt-2_temp"]))
    assert all(p.exists() for p in kept) and not any(p.exists() for p in orphans)
    assert not (run / "checkpoints" / "ckpt-2_temp").exists()
