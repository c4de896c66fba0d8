"""Shared by the absl apps in bin/: virtualenv bootstrap, common flags, error handling.

`bin/<app>` runs from a checkout without activating anything: when tfwd is not
importable here but the checkout's .venv exists, the app re-executes itself
with the virtualenv's Python.
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _bootstrap() -> None:
    if importlib.util.find_spec("tfwd") and importlib.util.find_spec("tensorflow"):
        return
    venv = os.path.join(_ROOT, ".venv")
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and os.path.abspath(sys.prefix) != venv:
        os.execv(python, [python] + sys.argv)
    sys.exit(f"tfwd is not installed: run `{_ROOT}/run.sh test` once (it creates .venv), or `pip install -e {_ROOT}`.")


_bootstrap()

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def define_data_flags() -> None:
    """The data flags of bin/train (they select the dataset and the subset)."""
    from tfwd.data import DATASETS

    flags.DEFINE_enum("dataset", "cifar10", list(DATASETS), "Dataset (TFDS name, or image_folder with --data_dir).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).")
    flags.DEFINE_bool(
        "download",
        None,
        "Fetch a missing dataset with TFDS. Unset: only CIFAR-10/100, into TFDS's default folder, when no "
        "--data_dir is given. True: any dataset, into --data_dir too (ImageNet: TFDS's manual download). "
        "False (--nodownload): never.",
    )
    flags.DEFINE_integer("train_examples", None, "Class-balanced training subset size (default: all).", lower_bound=1)
    flags.DEFINE_integer("validation_examples", 0, "Class-balanced examples held out of training.", lower_bound=0)
    flags.DEFINE_integer("data_seed", 0, "Seed of the subset selection (not of the data order).")


def run(main) -> None:
    """app.run(main), turning tfwd's expected errors into one line on stderr and exit code 1.

    Ctrl-C (SIGINT) prints one line and exits with 130, the shell's code for it: every
    write is atomic, so nothing half-written is left, and rerunning resumes a training.
    """

    def wrapped(argv):
        from tfwd import errors

        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        try:
            return main(argv)
        except errors.EXPECTED as e:
            if FLAGS.verbosity > 0:  # -v 1 shows the traceback
                raise
            logging.flush()
            print(f"error: {errors.one_line(e)}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            if FLAGS.verbosity > 0:
                raise
            logging.flush()
            print(
                "error: Interrupted (Ctrl-C); nothing half-written is left. Rerun the same command to resume or "
                "start again.",
                file=sys.stderr,
            )
            sys.exit(130)

    try:
        app.run(wrapped)
    except KeyboardInterrupt:  # before main started (flag parsing, imports)
        print("error: Interrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(130)
