"""The block detector against the heatmaps labelled by eye: agreement per split, and a figure.

    python benchmarks/block_labels.py [--figure=docs/images/block_labels.png] [--min_contrast=...] [--min_layers=...]

Prints one line per labelled heatmap that has a committed matrix (its split, whether the detector
agrees with the label, its peak contrast, the labelled and the detected ranges), then the
agreement of each split: block or none, and an intersection over union >= 0.7 with every labelled
block (tfwd.blocks.agrees). The figure shows each heatmap with the labelled blocks (dashed green,
optional ones dotted) and the detected ones (cyan, further blocks white).
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from tfwd import blocks  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", default=None, help="Write the labelled heatmaps with both outlines here (PNG).")
    parser.add_argument("--min_contrast", type=float, default=blocks.MIN_CONTRAST)
    parser.add_argument("--min_squareness", type=float, default=blocks.MIN_SQUARENESS)
    parser.add_argument("--min_fraction", type=float, default=blocks.MIN_FRACTION)
    parser.add_argument("--min_layers", type=int, default=blocks.MIN_LAYERS)
    parser.add_argument("--min_outside", type=int, default=blocks.MIN_OUTSIDE)
    args = parser.parse_args()
    thresholds = {k: v for k, v in vars(args).items() if k.startswith("min_")}
    labels = json.load(open(os.path.join(ROOT, "data", "labels", "block_labels.json")))["heatmaps"]
    rows, panels = {}, []
    for label in (lab for lab in labels if lab["matrix"]):
        c, names, *spans = blocks.labelled_heatmap(label, ROOT)
        found = blocks.find_block_structure(c, names, **thresholds)
        ok = blocks.agrees(found, *spans)
        rows.setdefault(label["split"], []).append(ok)
        got = ", ".join(f"{b.start}-{b.end}" for b in found.blocks) or "none"
        print(
            f"{label['split']:8s} {'agrees  ' if ok else 'DISAGREES'} {label['id']:40s} peak {found.peak_contrast:5.2f}"
            f"  label {spans[0] or 'none'} optional {spans[1] or '-'}  detected {got}"
        )
        panels.append((label, c, names, spans, found, ok))
    for split, ok in rows.items():
        print(f"{split}: {sum(ok)} of {len(ok)} agree ({np.mean(ok):.0%})")
    if args.figure:
        draw(panels, args.figure)


def draw(panels, path):
    import matplotlib

    matplotlib.use("Agg")  # a script that only writes files
    import matplotlib.pyplot as plt

    from tfwd import plots
    from tfwd.plots.heatmaps import heatmap
    from tfwd.plots.report import outline_block

    cols = 4
    rows = -(-len(panels) // cols)
    fig = plt.figure(figsize=(3.1 * cols, 3.3 * rows))
    for k, (label, c, names, spans, found, ok) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        title = f"{label['id']} ({label['split']})\n{'agrees' if ok else 'DISAGREES'}, peak {found.peak_contrast:.2f}"
        heatmap(c, ax=ax, title=title, rows=names, cols=names, colorbar=False)
        for start, end in spans[0]:
            outline_block(ax, start - 1, end + 1, color="lime", linestyle="--")
        for start, end in spans[1]:
            outline_block(ax, start - 1, end + 1, color="lime", linestyle=":")
        for j, b in enumerate(found.blocks):
            outline_block(ax, b.start, b.end, color="cyan" if j == 0 else "white")
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=90)  # 33+ panels: keep the committed figure small
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
