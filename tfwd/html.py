"""The self-contained HTML report of tfwd.report: findings, runs, figures, settings."""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import time
from typing import Any

import tensorflow as tf

from tfwd import plots
from tfwd.plots.report import block_heatmaps

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


def _entries(results):
    return [(name, e) for name, e in results.items() if name != "_cross_seed"]


def _run_rows(results) -> str:
    rows = []
    for name, e in _entries(results):
        c = e["run"].config
        res = e["run"].results()
        b = e["block"]
        block = f"{b.start_name} .. {b.end_name} ({b.fraction:.0%}, mean CKA {b.mean_cka:.2f})" if b.found else "none"
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{c.model.depth}</td><td>{c.model.width:g}</td>"
            f"<td>{'yes' if c.model.residual else 'no'}</td><td>{c.data.train_examples or 'all'}</td><td>{c.train.seed}</td>"
            f"<td>{c.train.epochs}</td><td>{100 * res['test_accuracy']:.1f}%</td><td>{res.get('train_seconds', 0) / 60:.1f}</td>"
            f"<td>{html.escape(block)}</td></tr>"
        )
    head = "<tr><th>run</th><th>depth</th><th>width</th><th>residual</th><th>train examples</th><th>seed</th><th>epochs</th><th>test accuracy</th><th>training (min)</th><th>block structure</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _finding_rows(findings) -> str:
    rows = []
    for f in findings:
        css = f["verdict"].replace(" ", "-")
        rows.append(
            f"<tr><td>({f['id']}) {html.escape(f['claim'])}</td><td class='small'>{html.escape(f['paper'])}</td>"
            f"<td>{html.escape(f['measured'])}</td><td class='{css}'>{f['verdict']}</td></tr>"
        )
    head = "<tr><th>claim</th><th>paper</th><th>measured here</th><th>verdict</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(folder: str, spec: dict[str, Any], results: dict[str, Any], findings: list, timings: dict, seconds: float) -> None:
    """Writes report.html, findings.json and the report's own figures into `folder`."""
    from tfwd import findings as findings_lib

    panels = [
        {"matrix": e["cka"]["matrix"], "names": e["cka"]["names"], "title": name.split("-", 1)[1], "block": e["block"]}
        for name, e in _entries(results)
        if e["run"].config.train.seed == 0
    ]
    figures = []
    plots.save_figure(block_heatmaps(panels, suptitle="Within-model CKA (block structure outlined)"), os.path.join(folder, "heatmaps.png"))
    figures.append(("Within-model CKA of every seed-0 run; cyan squares: detected block structure", "heatmaps.png"))
    cross = results.get("_cross_seed", {})
    if cross:
        cross_panels = [
            {"matrix": p["matrix"], "names": p["names"], "title": f"{p['runs'][0].split('-', 1)[1]} vs seed 1", "block": None}
            for p in cross.values()
        ]
        plots.save_figure(block_heatmaps(cross_panels, suptitle="CKA across seeds (rows: seed 0, columns: seed 1)"), os.path.join(folder, "cross_seed.png"))
        figures.append(("CKA between seeds 0 and 1 of the same configuration", "cross_seed.png"))
    per_run = []
    for name, e in _entries(results):
        dirs = e["dirs"]
        for kind, file, caption in (
            ("pc", "first_pc.png", "First principal component (Figure 3)"),
            ("probes", "probes_cka.png", "Linear probes under the CKA heatmap (Figure 4)"),
            ("prune_blocks", "prune_blocks.png", "Block deletion (Figure 5)"),
        ):
            path = os.path.join(dirs.get(kind, ""), file)
            if kind in dirs and os.path.exists(path):
                per_run.append(f"<h3>{html.escape(name)}: {caption}</h3>{_img(path, caption)}")
    with open(os.path.join(folder, "findings.json"), "w") as f:
        json.dump({"findings": findings, "timings_seconds": timings, "total_seconds": seconds}, f, indent=2, default=str)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}, TF {tf.__version__}"
    timing = ", ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(timings.items()))
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>tfwd report: {html.escape(spec['name'])}</title>
<style>{STYLE}</style></head><body>
<h1>tfwd report: {html.escape(spec['name'])}</h1>
<p>{html.escape(spec.get('description', ''))}</p>
<p class="small">Written {time.strftime('%Y-%m-%d %H:%M')} on {html.escape(machine)}. Time spent: {html.escape(timing)}
(training from results.json; analyses reused from earlier reports count 0). This report took {seconds / 60:.1f} min to build.</p>
<h2>Findings</h2>
{_finding_rows(findings)}
<p class="small">How each verdict is reached: {html.escape(' '.join(' '.join(rule.__doc__.split()) for rule in findings_lib.RULES))}
Block structure: tfwd.blocks.find_block_structure with {html.escape(json.dumps(spec['block_structure']) if spec.get('block_structure') else 'its defaults')}.</p>
<h2>Runs</h2>
{_run_rows(results)}
<h2>Figures</h2>
{''.join(f'<h3>{html.escape(c)}</h3>' + _img(os.path.join(folder, f), c) for c, f in figures)}
{''.join(per_run)}
<h2>Settings</h2>
<pre>{html.escape(json.dumps(spec, indent=2))}</pre>
</body></html>"""
    with open(os.path.join(folder, "report.html"), "w") as f:
        f.write(body)
