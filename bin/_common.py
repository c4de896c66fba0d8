"""Shared by the absl apps in bin/: virtualenv bootstrap, common flags, error handling.

`bin/<app>` runs from a checkout without activating anything: when tfwd is not
importable here but the checkout's .venv exists, the app re-executes itself
with the virtualenv's Python.
"""

import importlib.util
import os
import signal
import sys
import threading
import time

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


def define_setting(name: str, **overrides) -> None:
    """Defines the flag of one training setting from its entry in tfwd.run_settings.SETTINGS.

    `overrides` replace fields of the entry (e.g. help=, default=) where an app uses the
    setting differently. The flag's default is the entry's `flag_default`.
    """
    import dataclasses

    from tfwd import run_settings

    setting = dataclasses.replace(run_settings.BY_NAME[name], **overrides)
    # Listed by the app's --help as its own flags (absl names the main module after argv[0]).
    extra = {"module_name": sys.argv[0]}
    if setting.lower_bound is not None:
        extra["lower_bound"] = setting.lower_bound
    kind = setting.kind
    if isinstance(kind, tuple):
        flags.DEFINE_enum(name, setting.flag_default, list(kind), setting.help, **extra)
    elif kind in ("ints", "floats"):
        flags.DEFINE_list(name, setting.flag_default, setting.help, **extra)
    else:
        define = {
            "int": flags.DEFINE_integer,
            "float": flags.DEFINE_float,
            "bool": flags.DEFINE_bool,
            "str": flags.DEFINE_string,
        }[kind]
        define(name, setting.flag_default, setting.help, **extra)


def define_settings(section: str | None = None) -> None:
    """Defines the flags of every training setting (of one tfwd.run_settings section), in SETTINGS order."""
    from tfwd import run_settings

    for setting in run_settings.SETTINGS:
        if section is None or setting.section == section:
            define_setting(setting.name)


def define_data_dir_flag() -> None:
    """--data_dir, with one help text in every app (tfwd.run_settings.DATA_DIR_HELP)."""
    define_setting("data_dir")


def define_strategy_flags() -> None:
    """--strategy and --tpu, as bin/train has them."""
    define_setting("strategy")
    define_setting("tpu")


# Seconds after an unhandled Ctrl-C before `run` raises KeyboardInterrupt in the main thread again
# (at once when Python reports that it dropped one in a finalizer).
REINTERRUPT_SECONDS = 5.0


class _CtrlC:
    """SIGINT raises KeyboardInterrupt, as Python's own handler does, and arms a watchdog that raises
    it again until `run` has handled one.

    Python raises KeyboardInterrupt wherever the main thread is when the signal lands. Inside a
    finalizer or a gc callback (__del__, a weakref callback, JAX's _xla_gc_callback) it is printed
    as "Exception ignored" with a traceback and dropped: such a one is raised again at once, and not
    printed. In code that catches BaseException it is lost silently: it is raised again every
    REINTERRUPT_SECONDS. Either way the program does not run on as if Ctrl-C had not been pressed.
    """

    def __init__(self):
        self.handled = threading.Event()
        self.lost = threading.Event()
        self.armed = False

    def install(self) -> None:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
            signal.signal(signal.SIGINT, self._on_sigint)
            self._unraisable = sys.unraisablehook
            sys.unraisablehook = self._on_unraisable

    def _on_sigint(self, signum, frame):
        if not self.armed:
            self.armed = True
            threading.Thread(target=self._repeat, daemon=True).start()
        raise KeyboardInterrupt

    def _on_unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and not self.handled.is_set():
            self.lost.set()  # dropped inside a finalizer: the watchdog raises it again now
            return
        self._unraisable(unraisable)

    def _repeat(self) -> None:
        while True:
            if self.lost.wait(REINTERRUPT_SECONDS):
                self.lost.clear()
                time.sleep(0.05)  # out of the finalizer first
            if self.handled.is_set():
                return
            # A real signal, so that a blocking call of the main thread returns (EINTR) and _on_sigint runs.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def run(main) -> None:
    """app.run(main), turning tfwd's expected errors into one line on stderr and exit code 1.

    Ctrl-C (SIGINT) prints one line and exits with 130, the shell's code for it: every
    write is atomic, so nothing half-written is left, and rerunning resumes a training.
    A Ctrl-C that the program lost (see `_CtrlC`) is raised again until it stops it.
    """
    ctrl_c = _CtrlC()
    ctrl_c.install()

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
        finally:
            ctrl_c.handled.set()  # finished, failed or interrupted: no Ctrl-C is raised again

    try:
        app.run(wrapped)
    except KeyboardInterrupt:  # before main started (flag parsing, imports)
        ctrl_c.handled.set()
        print("error: Interrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(130)
