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


# --- analyses that read a run while it could be retrained (two real processes) ---------------------------------


def _stopped_at_its_write(process: subprocess.Popen, timeout: float = 900.0) -> None:
    """Waits until `process` halts itself (TFWD_FAULT=analysis_write:0:stop): its output is computed, not yet in."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        with open(f"/proc/{process.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.2)
    raise AssertionError("the analysis never reached its write")


def _start_cka(root, bin_env, run_dir, out_dir):
    return subprocess.Popen(
        [sys.executable, str(root / "bin" / "cka"), f"--runs={run_dir}", f"--out_dir={out_dir}", "--examples=64"]
        + ["--batch_size=32", "--passes=1"],
        env=dict(bin_env, TFWD_FAULT="analysis_write:0:stop"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_overwrite_of_a_run_an_analysis_reads_is_refused_naming_it(root, bin_env, tmp_path, tiny_runs):
    import shutil

    run_dir = shutil.copytree(tiny_runs[0], tmp_path / os.path.basename(tiny_runs[0]))
    before = runs.fingerprint(run_dir)
    analysis = _start_cka(root, bin_env, run_dir, tmp_path / "cka")
    try:
        _stopped_at_its_write(analysis)
        train = subprocess.run(
            [sys.executable, str(root / "bin" / "train"), "--depth=8", "--width=0.25", "--train_examples=256"]
            + ["--batch_size=32", "--epochs=2", f"--out_dir={tmp_path}", "--overwrite"],
            env=bin_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        analysis.send_signal(signal.SIGCONT)
    assert train.returncode == 1
    assert train.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir} is being read by an analysis (pid {analysis.pid}); wait for it to finish or stop it, "
        "then rerun."
    )
    _, err = analysis.communicate(timeout=900)
    assert analysis.returncode == 0, err[-2000:]
    assert runs.fingerprint(run_dir) == before  # the run was left alone
    from tfwd import cka

    assert cka.load(str(tmp_path / "cka")).settings["measured"] == [before]
    assert before["files"]["model.keras"] is not None


def test_an_analysis_whose_run_changed_under_it_discards_its_output(root, bin_env, tmp_path, tiny_runs):
    """A run replaced behind the lock's back (another machine, another version) before the output is swapped in."""
    import shutil

    run_dir = shutil.copytree(tiny_runs[0], tmp_path / os.path.basename(tiny_runs[0]))
    analysis = _start_cka(root, bin_env, run_dir, tmp_path / "cka")
    try:
        _stopped_at_its_write(analysis)
        for name in (runs.MODEL, runs.RESULTS):  # the "retrained" run: another seed's model
            shutil.copy(os.path.join(tiny_runs[1], name), os.path.join(run_dir, name))
    finally:
        analysis.send_signal(signal.SIGCONT)
    _, err = analysis.communicate(timeout=900)
    assert analysis.returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"error: Run {run_dir} changed while this analysis read it (model.keras, results.json; retrained?): its "
        "output was discarded. Rerun the analysis on the run as it is now."
    )
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(run_dir)]  # no output, no temporary folder


def test_a_reader_refuses_an_output_of_a_retrained_run(tmp_path, tiny_runs):
    import shutil

    from tfwd import pc

    run_dir = shutil.copytree(tiny_runs[0], tmp_path / os.path.basename(tiny_runs[0]))
    out = pc.analyze(str(run_dir), examples=16, batch_size=16)
    assert pc.load(out).settings["measured"] == [runs.fingerprint(run_dir)]
    shutil.copy(os.path.join(tiny_runs[1], runs.MODEL), run_dir / runs.MODEL)  # retrained since
    with pytest.raises(runs.RunError) as info:
        pc.load(out)
    assert str(info.value) == (
        f"{out} measured an earlier model of {run_dir}: the run was retrained since. Rerun the analysis (or delete "
        "that output)."
    )


def test_a_finished_run_an_analysis_reads_is_still_finished_for_training(tmp_path, tiny_runs):
    """bin/train without --overwrite of a finished run that an analysis reads reports it finished, as before."""
    import shutil

    from tfwd import training

    run_dir = shutil.copytree(tiny_runs[0], tmp_path / os.path.basename(tiny_runs[0]))
    config = runs.read_config(str(run_dir))
    with runs.reading_runs():
        runs.Run(str(run_dir))
        assert training.train(config, str(tmp_path), verbose=0, tensorboard=False) == str(run_dir)
        with pytest.raises(runlock.RunBusyError, match=f"being read by an analysis \\(pid {os.getpid()}\\)"):
            training.train(config, str(tmp_path), verbose=0, tensorboard=False, overwrite=True)


@pytest.mark.parametrize("inside", [False, True], ids=["the-loop", "inside-the-loop"])
def test_training_into_a_symlink_loop_names_the_loop(tmp_path, inside):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    out = tmp_path / "a" / "runs" if inside else tmp_path / "a"
    where = f"lies inside a symlink loop ({tmp_path / 'a'})" if inside else "is a symlink loop"
    with pytest.raises(runs.RunError) as info:
        runlock.RunLock(str(out / "cifar10-resnet8-w1-s0")).__enter__()
    assert str(info.value) == f"--out_dir {out} {where}; choose a path that resolves to a folder."
