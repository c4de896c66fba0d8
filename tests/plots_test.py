"""tfwd.plots: heatmaps draw the given matrix on a fixed 0..1 scale with stage boundaries."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from tfwd import plots

NAMES = ["stem_relu", "stage1_block1_out", "stage1_block2_out", "stage2_block1_out", "stage3_block1_out", "logits"]


@pytest.mark.parametrize("module", ["tfwd.plots", "tfwd.atomic", "tfwd.errors", "tfwd.layer_names"])
def test_light_modules_do_not_import_tensorflow(module, root):
    # Plotting saved results, and an app's error handling, must not pay for TensorFlow or Keras.
    code = f"import sys, {module}; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# A caller's backend (a notebook's, here "svg" standing in for it) before and after tfwd draws and saves.
DRAW_UNDER_A_BACKEND = """
import sys, matplotlib
matplotlib.use("svg")
import numpy as np
from tfwd import plots
m = np.eye(6)
plots.save_figure(plots.heatmap(m).figure, sys.argv[1] + "/h.png")
grid = plots.cka_grid({(0, 0): m, (0, 1): m, (1, 1): m}, [list("abcdef")] * 2, ["a", "b"])
plots.save_figure(grid, sys.argv[1] + "/g.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_drawing_and_saving_leave_the_callers_backend_alone(tmp_path, root):
    done = subprocess.run(
        [sys.executable, "-c", DRAW_UNDER_A_BACKEND, str(tmp_path)], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg", "False"]  # the backend kept, and pyplot never asked to pick one
    assert [open(tmp_path / f, "rb").read(4) for f in ("h.png", "g.png")] == [b"\x89PNG"] * 2


def test_heatmap_draws_the_matrix_on_0_1_with_stage_lines(tmp_path):
    matrix = np.random.default_rng(0).random((6, 6))
    ax = plots.heatmap(matrix, title="resnet8-w1", rows=NAMES, cols=NAMES)
    image = ax.images[0]
    np.testing.assert_array_equal(image.get_array(), matrix)
    assert image.get_clim() == (0.0, 1.0) and image.origin == "lower"
    assert ax.get_title() == "resnet8-w1"
    # boundaries at 1, 3, 4, 5 on both axes
    assert len(ax.lines) == 2 * 4
    path = plots.save_figure(ax.figure, str(tmp_path / "h.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_grid_shows_upper_triangle(tmp_path):
    blocks = {(0, 0): np.eye(6), (0, 1): np.zeros((6, 6)), (1, 1): np.eye(6)}
    fig = plots.cka_grid(blocks, [NAMES, NAMES], ["a", "b"])
    axes = fig.axes
    titles = [ax.get_title() for ax in axes if ax.images]
    assert titles == ["a", "a (y) vs b (x)", "b"]
    assert not axes[2].axison  # (1, 0) is empty
    plots.save_figure(fig, str(tmp_path / "g.png"))


def test_dominant_image_grid_titles_stay_clear_of_the_row_above():
    # Two rows of five, each titled with two lines: no title may overlap an image of the row above.
    from tfwd.plots.dominant_datapoints import image_grid

    images = np.random.default_rng(0).uniform(size=(10, 32, 32, 3))
    fig = image_grid(images, ["airplane"] * 10, np.linspace(636, 411, 10), range(10), title="top 10 by |score|")
    canvas = FigureCanvasAgg(fig)  # the figure belongs to no pyplot backend: lay it out as saving would
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = fig.axes
    assert len(axes) == 10
    for above, below in zip(axes[:5], axes[5:]):
        image_bottom = above.get_window_extent(renderer).y0
        title_top = below.title.get_window_extent(renderer).y1
        assert title_top < image_bottom, (title_top, image_bottom)
    assert [a.get_title() for a in axes[:2]] == ["#0 airplane\nscore 636", "#1 airplane\nscore 611"]


def test_wide_deep_heatmap_marks_both_models_blocks(tmp_path):
    wide = NAMES  # 6 layers, block over 3..4 (stages 2-3)
    deep = ["stem_relu"] + [f"stage{s}_block{b}_out" for s in (1, 2, 3) for b in (1, 2, 3)] + ["logits"]  # 11
    matrix = np.random.default_rng(0).random((6, 11))
    ax = plots.wide_deep_heatmap(
        matrix, wide, deep, row_blocks=[(3, 4)], col_blocks=[(4, 9), (1, 2)], row_label="wide", col_label="deep"
    )
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    marks = {}
    for p in ax.patches:
        marks.setdefault(p.get_gid(), []).append(p)
    assert [(p.get_y(), p.get_height()) for p in marks["block_y"]] == [(2.5, 2)]
    assert [(p.get_x(), p.get_width()) for p in marks["block_x"]] == [(3.5, 6), (0.5, 2)]
    assert [tuple(p.get_facecolor()[:3]) for p in marks["block_x"]] == [(0.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    (meet,) = marks["blocks_meet"]  # the largest blocks' square: deep's 4..9 against wide's 3..4
    assert (meet.get_x(), meet.get_y(), meet.get_width(), meet.get_height()) == (3.5, 2.5, 6, 2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stem", "s1", "s2", "s3", "head"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stem", "s1", "s2", "s3", "head"]
    np.testing.assert_allclose(ax.get_xticks(), [0, 2, 5, 8, 10])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("deep", "wide")
    path = plots.save_figure(ax.figure, str(tmp_path / "wide_deep.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"
    # Without blocks: nothing marked.
    assert not plots.wide_deep_heatmap(matrix, wide, deep).patches


def _synthetic_history(epochs=(10, 20, 30, 40, 50, 60, 70, 80, 90, 100)):
    """A history whose block (layers 3..5 of 6) appears at epoch 40 and grows, as tfwd.callbacks.load_history gives."""
    k = len(epochs)
    matrices = np.stack([np.full((6, 6), 0.1 * (i + 1) / k) + np.eye(6) * 0.5 for i in range(k)])
    start = np.array([-1, -1, -1, 3, 3, 2, 2, 2, 2, 2])[:k]
    return {
        "epochs": np.array(epochs),
        "matrices": matrices,
        "names": NAMES,
        "block_start": start,
        "block_end": np.where(start >= 0, 5, -1),
        "block_fraction": np.where(start >= 0, (6 - start) / 6, 0.0),
        "block_contrast": np.linspace(-0.1, 0.6, k),
        "pc_fraction_inside": np.where(start >= 0, 0.8, np.nan),
        "pc_fraction_outside": np.full(k, 0.3),
    }


def test_cka_history_figure_strip_and_block_against_epochs(tmp_path):
    history = _synthetic_history()
    fig = plots.cka_history_figure(history, panels=4, title="resnet38-w1-n128")
    heatmaps = [ax for ax in fig.axes if ax.images]
    # Four heatmaps at evenly spaced measurements, first and last included, each the matrix of its epoch.
    assert [ax.get_title() for ax in heatmaps] == ["epoch 10", "epoch 40", "epoch 70", "epoch 100"]
    for ax, k in zip(heatmaps, [0, 3, 6, 9]):
        np.testing.assert_array_equal(ax.images[0].get_array(), history["matrices"][k])
    # The block outlined where there is one: none at epoch 10, layers 3..5 at epoch 40.
    assert [len(ax.patches) for ax in heatmaps] == [0, 1, 1, 1]
    assert heatmaps[1].patches[0].get_xy() == (2.5, 2.5) and heatmaps[1].patches[0].get_width() == 3
    (lines,) = [ax for ax in fig.axes if ax.get_xlabel() == "epoch"]
    drawn = {line.get_label(): line for line in lines.get_lines() if not line.get_label().startswith("_")}
    fraction = drawn["block fraction of the layers"]
    np.testing.assert_array_equal(fraction.get_xdata(), history["epochs"])
    np.testing.assert_array_equal(fraction.get_ydata(), history["block_fraction"])
    inside = drawn["first-PC fraction, residual stream inside the block"].get_ydata()
    np.testing.assert_array_equal(np.isnan(inside), history["block_start"] < 0)
    assert len(drawn) == 4 and lines.get_ylim() == (-0.1, 1.02)  # room for the negative peak contrast
    path = plots.save_figure(fig, str(tmp_path / "history.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_cka_history_figure_shows_every_measurement_when_few_and_refuses_none():
    fig = plots.cka_history_figure(_synthetic_history(epochs=(5, 10)), panels=6)
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["epoch 5", "epoch 10"]
    with pytest.raises(ValueError, match=r"at least one measurement. Received: a history of 0 epochs"):
        plots.cka_history_figure({"epochs": np.zeros(0)})
    with pytest.raises(ValueError, match=r"`panels` must be an integer >= 1. Received: panels=0"):
        plots.cka_history_figure(_synthetic_history(), panels=0)
