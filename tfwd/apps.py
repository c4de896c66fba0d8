"""The installed commands: `tfwd-train`, `tfwd-cka`, ... each runs its app of bin/.

`pip install` ships bin/ in the package (tfwd/_bin) and the report and sweep specs of
data/ (tfwd/_data); in a checkout both are read where they are, so `bin/<app>` and
`tfwd-<app>` run the same code. Each command runs its app as a script (`__main__`),
exactly as `bin/<app>` does.
"""

from __future__ import annotations

import os
import runpy
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# The commands and the apps of bin/ they run (setup.cfg's console_scripts name the same functions).
APPS = ("train", "cka", "pc", "probes", "prune_blocks", "dominant_datapoints", "compare_predictions", "sweep", "report")
SPEC_KINDS = ("reports", "sweeps")
# The installed command running now (runpy gives the app the script's path as sys.argv[0]).
_command_path: str | None = None


def _folder(name: str) -> str:
    """tfwd/_<name> of an installed package, else <checkout>/<name> (bin, data)."""
    packaged = os.path.join(_PACKAGE, f"_{name}")
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(_PACKAGE), name)


def command_name(app: str) -> str:
    """The installed command of a bin/ app: "prune_blocks" -> "tfwd-prune-blocks"."""
    return "tfwd-" + app.replace("_", "-")


def train_program(app_file: str) -> str:
    """The training command a sweep or report launches: tfwd-train beside an installed command, else bin/train."""
    if _command_path is not None:
        return os.path.join(os.path.dirname(_command_path), command_name("train"))
    return os.path.join(os.path.dirname(os.path.abspath(app_file)), "train")


def spec_path(kind: str, spec: str) -> str:
    """`spec` itself when it is a file, else the packaged spec of that name (e.g. "demo" -> .../reports/demo.json).

    Args:
        kind: "reports" or "sweeps".
        spec: a path, or the name of a spec tfwd ships.

    Example:
        >>> os.path.basename(spec_path("reports", "demo"))
        'demo.json'
    """
    if kind not in SPEC_KINDS:
        raise ValueError(f"`kind` must be one of {SPEC_KINDS}. Received: kind={kind!r}")
    if os.path.exists(spec) or os.sep in spec or spec.endswith(".json"):
        return spec
    packaged = os.path.join(_folder("data"), kind, f"{spec}.json")
    return packaged if os.path.isfile(packaged) else spec


def _run(app: str) -> None:
    global _command_path
    _command_path = os.path.abspath(sys.argv[0])
    folder = _folder("bin")
    sys.path.insert(0, folder)  # the app imports _common from its folder, as bin/<app> does
    runpy.run_path(os.path.join(folder, app), run_name="__main__")


def _command(app: str):
    def main() -> None:
        _run(app)

    main.__name__ = main.__qualname__ = app
    main.__doc__ = f"`{command_name(app)}`: runs bin/{app}."
    return main


train = _command("train")
cka = _command("cka")
pc = _command("pc")
probes = _command("probes")
prune_blocks = _command("prune_blocks")
dominant_datapoints = _command("dominant_datapoints")
compare_predictions = _command("compare_predictions")
sweep = _command("sweep")
report = _command("report")
