"""Matplotlib figures. Functions take computed arrays (never models or data) and an Axes or a path.

One module per kind of figure; everything public is re-exported here.
"""

from tfwd.plots.cka_history import cka_history_figure
from tfwd.plots.common import save_figure
from tfwd.plots.compare_predictions import per_class_differences, per_example_scatter
from tfwd.plots.heatmaps import cka_grid, heatmap, wide_deep_heatmap
from tfwd.plots.pc import first_pc_figure, variance_explained
from tfwd.plots.probes import probe_accuracy, probes_with_cka
from tfwd.plots.prune_blocks import deletion_accuracy
