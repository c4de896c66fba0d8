"""tfwd.apps and setup.cfg: the installed commands, the packaged bin/ apps and specs, a wheel in a fresh virtualenv."""

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

import tfwd
from tfwd import apps, report, sweeps


def _setup_cfg(root):
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    return config


def _bin_apps(root):
    """The apps of bin/: its executable files, not symlinks (aliases) nor _common.py."""
    folder = root / "bin"
    return sorted(f.name for f in folder.iterdir() if f.is_file() and not f.is_symlink() and os.access(f, os.X_OK))


def test_console_scripts_are_the_bin_apps(root):
    scripts = _setup_cfg(root)["options.entry_points"]["console_scripts"].split()
    entries = dict(zip(scripts[0::3], scripts[2::3]))  # "name = module:function" lines
    assert sorted(entries) == sorted(f"tfwd-{app.replace('_', '-')}" for app in _bin_apps(root))
    assert sorted(apps.APPS) == _bin_apps(root)
    for command, target in entries.items():
        module, function = target.split(":")
        assert module == "tfwd.apps" and apps.command_name(function) == command
        assert callable(getattr(apps, function))


def test_setup_cfg_lists_every_package(root):
    listed = _setup_cfg(root)["options"]["packages"].split()
    found = sorted(
        os.path.relpath(d, root).replace(os.sep, ".")
        for d, _, files in os.walk(root / "tfwd")
        if "__init__.py" in files
    )
    assert sorted(listed) == sorted(found + ["tfwd._bin", "tfwd._data"])


def test_specs_are_found_by_name(root, tmp_path, monkeypatch):
    assert apps.spec_path("reports", "demo") == str(root / "data" / "reports" / "demo.json")
    assert report.load_spec("demo")["name"] == "demo"
    assert sweeps.load_spec("figure1") == sweeps.load_spec(str(root / "data" / "sweeps" / "figure1.json"))
    mine = tmp_path / "demo"  # a file of that name wins over the packaged spec
    mine.write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert apps.spec_path("reports", "demo") == "demo"
    with pytest.raises(ValueError, match=r"Cannot read report spec nosuch: No such file or directory"):
        report.load_spec("nosuch")
    with pytest.raises(ValueError, match=r"`kind` must be one of \('reports', 'sweeps'\). Received: kind='report'"):
        apps.spec_path("report", "demo")


def test_train_program_is_the_one_beside_the_app(monkeypatch):
    assert apps.train_program("/x/bin/sweep") == "/x/bin/train"
    monkeypatch.setattr(apps, "_command_path", "/venv/bin/tfwd-sweep")  # as `tfwd-sweep` runs bin/sweep
    assert apps.train_program("/site-packages/tfwd/_bin/sweep") == "/venv/bin/tfwd-train"


@pytest.mark.slow
def test_wheel_installs_the_commands(root, tmp_path, tfds_dir):
    # Build from a copy, so the checkout gets no build/ or egg-info folder.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(root, source, symlinks=True, ignore=skip)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", dist, source], check=True, timeout=600)
    (wheel,) = dist.glob("tfwd-*.whl")

    # A fresh virtualenv that sees this one's packages (TensorFlow is not downloaded again), not its tfwd.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "outer.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(pip + ["--python", python, "install", "--no-index", wheel], check=True, timeout=600)

    work = tmp_path / "elsewhere"  # outside the checkout
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TFDS_DATA_DIR=tfds_dir, TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{venv / 'bin'}:{os.environ['PATH']}")

    def run(*argv, code=0):
        out = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        assert out.returncode == code, out.stderr[-3000:]
        return out

    where = run(python, "-c", "import tfwd; print(tfwd.__file__)").stdout.strip()
    assert where.startswith(str(venv)), where  # the wheel's tfwd, not the checkout's
    for app in apps.APPS:
        assert (venv / "bin" / apps.command_name(app)).exists(), app
    usage = run("tfwd-train", "--help", code=1).stdout  # absl's --help exits with 1, as bin/train --help does
    assert "Trains one CIFAR ResNet" in usage and "--depth" in usage and "--out_dir" in usage
    commands = run("tfwd-sweep", "--spec=smoke", "--out_dir=runs").stdout.splitlines()  # the packaged spec
    assert commands and all(c.startswith(f"{venv / 'bin' / 'tfwd-train'} ") for c in commands)
    run("tfwd-train", "--depth=8", "--width=0.25", "--epochs=1", "--train_examples=256", "--batch_size=64")
    (run_dir,) = (work / "runs").iterdir()
    run("tfwd-cka", f"--runs={run_dir}", "--examples=64", "--batch_size=32", "--passes=1", "--out_dir=cka")
    assert (work / "cka" / "cka.npz").is_file()
    assert os.path.dirname(tfwd.__file__) != os.path.dirname(where)
