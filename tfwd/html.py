"""The self-contained HTML report of tfwd.report: findings, runs, figures, settings."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import platform
import time
from typing import Any

import numpy as np
import tensorflow as tf

from tfwd import analyses as registry, callbacks, findings as findings_lib, plots, runs
from tfwd.plots.cka_history import cka_history_figure
from tfwd.plots.report import block_heatmaps, wide_deep_figure

STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.reproduced { color: #17692a; font-weight: bold; }
.not-reproduced { color: #a11; font-weight: bold; }
.partly-reproduced { color: #a66a00; font-weight: bold; }
.not-measured { color: #777; font-weight: bold; }
img { max-width: 100%; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.small { color: #666; font-size: 0.9em; }
"""


def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _run_rows(analyses) -> str:
    rows = []
    for r in analyses.runs:
        c = r.config
        res = analyses.opened[r.name].results()
        b = analyses.blocks[r.name]
        peak = "no candidate range" if b.peak_contrast != b.peak_contrast else f"{b.peak_contrast:.2f}"
        block = f"{b.start_name} .. {b.end_name} ({b.fraction:.0%}, mean CKA {b.mean_cka:.2f})" if b.found else "none"
        recipe = _recipe(c)
        rows.append(
            f"<tr><td>{html.escape(r.name)}</td><td>{c.model.depth}</td><td>{c.model.width:g}</td>"
            f"<td>{'yes' if c.model.residual else 'no'}</td><td>{c.data.train_examples or 'all'}</td><td>{c.train.seed}</td>"
            f"<td>{c.train.epochs}</td><td>{html.escape(recipe)}</td><td>{100 * res.get('accuracy', float('nan')):.1f}%</td>"
            f"<td>{100 * res['test_accuracy']:.1f}%</td><td>{res.get('train_seconds', 0) / 60:.1f}</td>"
            f"<td>{html.escape(block)}</td><td>{peak}</td></tr>"
        )
    head = (
        "<tr><th>run</th><th>depth</th><th>width</th><th>residual</th><th>train examples</th><th>seed</th><th>epochs</th>"
        "<th>learning rate</th><th>train accuracy</th><th>test accuracy</th><th>training (min)</th><th>block structure</th>"
        "<th>peak contrast</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _recipe(config) -> str:
    t = config.train
    return f"lr {t.learning_rate:g}, cosine per {t.decay_every}" + (
        f", {t.warmup_epochs} warmup epochs" if t.warmup_epochs else ""
    )


def _percent(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}%"


def _first_pc(row: dict | None) -> str:
    """A first-PC row of the rules (tfwd.findings): mean inside / outside the block, both estimators."""
    if not row or "inside_mean" not in row:
        return "-"
    svd = row.get("inside_mean_svd")
    return f"{row['inside_mean']:.2f} / {row['outside_mean']:.2f}" + (
        "" if svd is None else f" (SVD {svd:.2f} / {row['outside_mean_svd']:.2f})"
    )


def _arm_section(folder: str, spec: dict[str, Any], analyses, arm, compared: dict) -> str:
    """The learning-rate arm: verdicts of (c)-(f) with each recipe, the runs side by side, their heatmaps."""
    name = spec["arm"]["name"]
    verdicts = "".join(
        f"<tr><td>({c['id']}) {html.escape(c['claim'])}</td><td class='{c['base'].replace(' ', '-')}'>{c['base']}</td>"
        f"<td class='{c['arm'].replace(' ', '-')}'>{c['arm']}</td><td>{'yes' if c['changed'] else 'no'}</td></tr>"
        for c in compared["claims"]
    )
    rows, panels = [], []
    by_name = {r.name: r for r in analyses.runs}
    for row in compared["runs"]:
        arm_run = next(r for r in arm.runs if r.name == row["run"])
        for side, run, label in (("base", by_name.get(row["run"]), "spec"), ("arm", arm_run, name)):
            measured = row[side]
            if measured is None:
                continue
            b = measured["block"]
            block = f"{b['start_name']} .. {b['end_name']} ({b['fraction']:.0%})" if b["found"] else "none"
            accuracies = "".join(
                f"<td>{_percent(measured[k])}</td>" for k in ("train_accuracy", "val_accuracy", "test_accuracy")
            )
            rows.append(
                f"<tr><td>{html.escape(row['run'])}</td><td>{html.escape(f'{label}: {_recipe(run.config)}')}</td>"
                f"{accuracies}<td>{html.escape(block)}</td><td>{_first_pc(measured['first_pc'])}</td></tr>"
            )
            panels.append(
                {
                    "matrix": run.cka,
                    "names": run.names,
                    "title": f"{runs.run_label(run.name)}, {label}",
                    "block": (analyses if side == "base" else arm).blocks[run.name],
                    "fitted": measured["fitted"],
                }
            )
    plots.save_figure(
        block_heatmaps(panels, columns=2, suptitle=f"Within-model CKA: the spec's recipe beside {name}"),
        os.path.join(folder, "arm_heatmaps.png"),
    )
    if compared["depends"]:
        side = {"base": "the spec's recipe", "arm": name, None: "neither (no validation accuracy)"}[
            compared["rests_on"]
        ]
        outcome = f"Verdicts that depend on the recipe: {', '.join(compared['depends'])}; the findings rest on {side}"
    else:
        outcome = "No verdict of (c)-(f) depends on the recipe"
    v = compared["validation"]
    return f"""<h2>Learning-rate arm: {html.escape(name)}</h2>
<p>{html.escape(spec["arm"].get("description", ""))} Claims (c)-(f) judged again with these runs in place of the spec's
runs of the same cells and seeds (rules.md). {outcome} (mean validation accuracy over these cells:
spec {_percent(v["base"])}, {html.escape(name)} {_percent(v["arm"])}).</p>
<table><tr><th>claim</th><th>spec's recipe</th><th>{html.escape(name)}</th><th>changed</th></tr>{verdicts}</table>
<table><tr><th>run</th><th>recipe</th><th>train accuracy</th><th>validation accuracy</th><th>test accuracy</th>
<th>block</th><th>first PC inside / outside</th></tr>{"".join(rows)}</table>
<h3>Heatmaps side by side</h3>{_img(os.path.join(folder, "arm_heatmaps.png"), "heatmaps of both recipes")}"""


def _finding_rows(judged) -> str:
    rows = []
    for f in judged:
        css = f["verdict"].replace(" ", "-")
        sensitivity = ", ".join(f"{k}: {v}" for k, v in f.get("sensitivity", {}).items())
        rows.append(
            f"<tr><td>({f['id']}) {html.escape(f['claim'])}</td><td class='small'>{html.escape(f['paper'])}</td>"
            f"<td>{html.escape(f['measured'])}</td><td class='{css}'>{f['verdict']}</td>"
            f"<td class='small'>{html.escape(sensitivity)}</td></tr>"
        )
    head = "<tr><th>claim</th><th>paper</th><th>measured here</th><th>verdict</th><th>verdict at contrast</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def machine() -> str:
    """CPU model, its vector extensions, cores, OS and TensorFlow version, for every published number."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    kind = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({kind}), {os.cpu_count()} cores, {platform.system()}, TF {tf.__version__}"


def findings_json(spec: dict[str, Any], analyses, judged: list, timings: dict, seconds: float) -> dict[str, Any]:
    """The report's findings.json: spec, machine, hours, claims with per-seed numbers and controls, dominant datapoints."""
    claims = []
    for f in judged:
        controls = {row["run"]: row["control"] for row in f["seeds"] if "control" in row}
        claims.append(
            {
                "id": f["id"],
                "claim": f["claim"],
                "paper": f["paper"],
                "verdict": f["verdict"],
                "measured": {"summary": f["measured"], "verdict_at_contrast": f.get("sensitivity", {})},
                "seeds": f["seeds"],
                "control": controls,
                "not_fitted": f.get("not_fitted", []),
            }
        )
    runs_ = {}
    for r in analyses.runs:
        res = analyses.opened[r.name].results()
        b = analyses.blocks[r.name]
        runs_[r.name] = {
            "test_accuracy": res["test_accuracy"],
            "train_accuracy": res.get("accuracy"),
            "train_minutes": res.get("train_seconds", 0.0) / 60,
            "block": b.to_dict(),
        }
    return {
        "spec": spec["name"],
        "machine": machine(),
        "hours": {k: v / 3600 for k, v in timings.items()} | {"total": seconds / 3600},
        "timings_seconds": timings,
        "runs": runs_,
        "claims": claims,
        # A run is named, not located: the file is meant to be shared, and the path is this machine's.
        "dominant_datapoints": {
            name: {**dataclasses.asdict(d), "settings": {**d.settings, "run": name}}
            for name, d in analyses.dominant.items()
        },
        **({"missing_outputs": analyses.missing} if analyses.missing else {}),
    }


def write_report(
    folder: str, spec: dict[str, Any], analyses, judged: list, timings: dict, seconds: float, arm=(None, None)
) -> None:
    """Writes report.html, findings.json and the report's own figures into `folder`.

    arm: (Analyses of the spec's arm, findings.judge_arm's comparison), or (None, None) without an arm.
    """
    arm, compared = arm
    panels = [
        {
            "matrix": r.cka,
            "names": r.names,
            "title": runs.run_label(r.name),
            "block": analyses.blocks[r.name],
            "fitted": r.train_accuracy is None
            or r.train_accuracy >= spec.get("min_train_accuracy", findings_lib.FIT_MIN),
        }
        for r in analyses.runs
    ]
    figures = []
    plots.save_figure(
        block_heatmaps(panels, suptitle="Within-model CKA (block structure outlined)"),
        os.path.join(folder, "heatmaps.png"),
    )
    figures.append(
        ("Within-model CKA of every run; cyan squares: the largest detected block, white: any other", "heatmaps.png")
    )
    if analyses.cross_seed:
        cross_panels = [
            {"matrix": p.matrix, "names": p.names, "title": f"{p.runs[0].split('-', 1)[1]} vs seed 1", "block": None}
            for p in analyses.cross_seed.values()
        ]
        plots.save_figure(
            block_heatmaps(cross_panels, suptitle="CKA across seeds (rows: seed 0, columns: seed 1)"),
            os.path.join(folder, "cross_seed.png"),
        )
        figures.append(("CKA between seeds 0 and 1 of the same configuration", "cross_seed.png"))
    if analyses.wide_deep:
        panels = [
            {
                "matrix": p.matrix,
                "names": p.names,
                "labels": [runs.run_label(r) for r in p.runs],
                "blocks": [analyses.blocks[r] for r in p.runs],
                "title": "seed 0 of each; band: each model's block",
            }
            for p in analyses.wide_deep
        ]
        plots.save_figure(wide_deep_figure(panels), os.path.join(folder, "wide_deep.png"))
        figures.append(
            ("Wide against deep (Figure 6, claim (g)): CKA across architectures, blocks marked", "wide_deep.png")
        )
    per_run = []
    for name, dirs in analyses.dirs.items():
        for kind, file, caption in (
            (entry.kind, file, caption) for entry in registry.in_report() for file, caption in entry.figures
        ):
            path = os.path.join(dirs.get(kind, ""), file)
            if kind in dirs and os.path.exists(path):
                per_run.append(f"<h3>{html.escape(name)}: {caption}</h3>{_img(path, caption)}")
    per_run += cka_history_sections(folder, analyses.opened)
    saved = findings_json(spec, analyses, judged, timings, seconds)
    if compared is not None:
        saved["arm"] = {"name": spec["arm"]["name"], **compared}
    with open(os.path.join(folder, "findings.json"), "w") as f:
        json.dump(_clean(saved), f, indent=2, allow_nan=False)
    arm_section = _arm_section(folder, spec, analyses, arm, compared) if compared is not None else ""
    timing = ", ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(timings.items()))
    rules = " ".join(findings_lib.__doc__.split())
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>tfwd report: {html.escape(spec["name"])}</title>
<style>{STYLE}</style></head><body>
<h1>tfwd report: {html.escape(spec["name"])}</h1>
<p>{html.escape(spec.get("description", ""))}</p>
<p class="small">Written {time.strftime("%Y-%m-%d %H:%M")} on {html.escape(machine())}. Time spent: {html.escape(timing)}
(training from results.json; analyses reused from earlier reports count 0). This report took {seconds / 60:.1f} min to build.</p>
<h2>Findings</h2>
{_missing(analyses.missing)}{_finding_rows(judged)}
<p class="small">How each verdict is reached (tfwd.findings, docs/science/rules.md): {html.escape(rules)}
Block structure: tfwd.blocks.find_block_structure with {html.escape(json.dumps(spec["block_structure"]) if spec.get("block_structure") else "its defaults")}.</p>
{arm_section}
<h2>Runs</h2>
{_run_rows(analyses)}
<h2>Figures</h2>
{"".join(f"<h3>{html.escape(c)}</h3>" + _img(os.path.join(folder, f), c) for c, f in figures)}
{"".join(per_run)}
<h2>Settings</h2>
<pre>{html.escape(json.dumps(spec, indent=2))}</pre>
</body></html>"""
    with open(os.path.join(folder, "report.html"), "w") as f:
        f.write(body)


def _missing(missing: list[str]) -> str:
    """The note of a report judged on exported outputs that lack some runs or analyses."""
    if not missing:
        return ""
    return f"<p class='partly-reproduced'>Not in the outputs judged, left out of every claim: {html.escape(', '.join(missing))}.</p>"


def cka_history_sections(folder: str, opened: dict[str, runs.Run]) -> list[str]:
    """For each run trained with --cka_every: its history figure, drawn into `folder`, as an HTML section."""
    sections = []
    for name, run in opened.items():
        history = os.path.join(run.path, callbacks.HISTORY)
        if os.path.exists(history):
            figure = cka_history_figure(callbacks.load_history(history), title=runs.run_label(name))
            path = plots.save_figure(figure, os.path.join(folder, f"cka_history_{name}.png"))
            caption = "Block structure as it formed: CKA heatmaps over training and the block against epochs"
            sections.append(f"<h3>{html.escape(name)}: {caption}</h3>{_img(path, caption)}")
    return sections


def _clean(obj):
    """JSON-ready: numpy scalars and arrays to Python, NaN and infinities to null (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
