"""Matplotlib figures. Functions take computed arrays (never models or data) and an Axes or a path.

One module per kind of figure; everything public is re-exported here.
"""

from tfwd.plots.common import save_figure
from tfwd.plots.heatmaps import cka_grid, heatmap
