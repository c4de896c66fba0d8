"""tfwd.findings: the rules of docs/science/rules.md (version 2) on synthetic analyses whose answers are known."""

import dataclasses
import functools

import numpy as np
import pytest

from tfwd import blocks, findings, models, runs
from tfwd.data import DataConfig


@functools.lru_cache(maxsize=None)
def _names(depth):
    return tuple(models.tap_names(models.cifar_resnet(depth=depth, width=0.25), "all"))


def _heatmap(names, block=None, level=0.95):
    """Neighbouring layers alike, fading with distance; a planted block of CKA `level` over [start, end]."""
    n = len(names)
    i = np.arange(n)
    c = 0.6 * np.exp(-np.abs(i[:, None] - i[None, :]) / 3.0)
    if block:
        a, b = names.index(block[0]), names.index(block[1])
        c[a : b + 1, a : b + 1] = level
    np.fill_diagonal(c, 1.0)
    return c


def _stagewise(names):
    """Layers of one stage alike (0.9), of different stages less (0.65): stages, but no sharp-edged block."""
    stages = np.array([models.stage_of(n) for n in names])
    c = np.where(stages[:, None] == stages[None, :], 0.9, 0.65)
    np.fill_diagonal(c, 1.0)
    return c


BLOCK38 = ("stage2_block2_conv1", "stage3_block6_out")  # stages 2-3 of ResNet-38


def _run(depth=38, n=782, seed=0, block=None, cka=None, pc=None, probes=None, prune=None, width=1.0):
    names = list(_names(depth))
    config = runs.RunConfig(runs.ModelConfig(depth, width), DataConfig(train_examples=n), runs.TrainConfig(seed=seed))
    matrix = cka if cka is not None else _heatmap(names, block)
    return findings.JudgedRun(config.name, config, names, matrix, pc=pc, probes=probes, prune_blocks=prune)


def _pc_result(names, fraction):
    """A tfwd.pc.PCResult with these first-PC fractions (the rules read nothing else of it)."""
    from tfwd import pc

    n, zeros, eye = len(names), np.zeros(len(names)), np.eye(len(names))
    return pc.PCResult(names, fraction, np.zeros((n, 4)), zeros, zeros, eye, eye, eye, (2, 3), 0.0, {})


def _verdicts(runs_, cross=None, cross_models=(), **detector):
    return {f["id"]: f["verdict"] for f in findings.judge(runs_, cross, detector, cross_models=cross_models)}


# --- the detector on calibration data ------------------------------------------------------


def test_detector_finds_a_planted_block_and_reports_its_contrast():
    names = list(_names(38))
    b = blocks.find_block_structure(_heatmap(names, BLOCK38), names)
    assert b.found and (b.start_name, b.end_name) == BLOCK38
    assert b.peak_contrast >= b.contrast >= 0.35


def test_detector_reads_stages_alike_within_as_blocks_only_above_the_threshold():
    """Layers of a stage alike (0.9), of different stages less (0.65): each stage is a square whose edge
    contrast is 0.9 - 0.65 = 0.25, a block exactly when the threshold is at most that."""
    names = list(_names(38))
    b = blocks.find_block_structure(_stagewise(names), names)
    assert b.peak_contrast == pytest.approx(0.25, abs=0.02)
    assert b.found == (b.peak_contrast >= blocks.MIN_CONTRAST)


@pytest.mark.parametrize("threshold", [0.2, 0.3, 0.35, 0.4, 0.5])
def test_a_block_is_found_exactly_when_the_peak_contrast_reaches_the_threshold(threshold):
    names = list(_names(14))
    for level in (0.86, 0.9, 0.95):
        c = _heatmap(names, ("stage2_block1_conv1", "stage3_block2_out"), level)
        c = 0.7 * c + 0.3 * np.where(np.eye(len(names)), 1.0, 0.5)  # lift the outside so contrast lands mid-range
        b = blocks.find_block_structure(c, names, min_contrast=threshold)
        assert b.found == (b.peak_contrast >= threshold)


def test_a_run_that_did_not_fit_its_data_counts_nowhere():
    """Rules v2: below 90% training accuracy a run's block is reported but judged by no claim, and it is no control."""
    deep = [_run(38, seed=s, block=BLOCK38) for s in (0, 1)]
    shallow = [_run(14, seed=s) for s in (0, 1)]
    assert _verdicts(shallow + deep)["a"] == "reproduced"
    for r in deep:
        r.train_accuracy = 0.117
    judged = findings.judge(shallow + deep)
    assert {f["id"]: f["verdict"] for f in judged}["a"] == "not measured"
    assert judged[0]["not_fitted"] == [r.name for r in deep]
    deep[0].train_accuracy = 0.95  # one fitted seed: the series of seed 0 alone is judged
    assert _verdicts(shallow + deep)["a"] == "reproduced"
    assert findings.JudgedRun("x", None, [], np.eye(2), train_accuracy=0.9).fitted


# --- (a), (b): growth with depth and with less data --------------------------------------


def test_depth_series_on_every_seed():
    series = [_run(14, seed=s) for s in (0, 1)] + [_run(38, seed=s, block=BLOCK38) for s in (0, 1)]
    found = findings.judge(series)[0]
    assert found["verdict"] == "reproduced" and len(found["seeds"]) == 2
    assert "width: not measured" in found["measured"]
    one_seed = series[:3] + [_run(38, seed=1)]  # the second seed has no block
    assert _verdicts(one_seed)["a"] == "partly reproduced"
    assert _verdicts([_run(14), _run(38)])["a"] == "not reproduced"


def test_less_data_on_every_seed():
    cells = [_run(38, 782, s, block=BLOCK38) for s in (0, 1)] + [_run(38, 3125, s) for s in (0, 1)]
    assert _verdicts(cells)["b"] == "reproduced"
    cells[3] = _run(38, 3125, 1, block=BLOCK38)
    assert _verdicts(cells)["b"] == "partly reproduced"


def test_a_block_in_one_seed_only_counts_that_seed():
    block_seed, free_seed = _run(38, seed=0, block=BLOCK38), _run(38, seed=1)
    fraction = np.full(len(block_seed.names), 0.1)
    fraction[
        [i for i, n in enumerate(block_seed.names) if n.startswith(("stage2", "stage3")) and n.endswith("_out")]
    ] = 0.9
    block_seed.pc = _pc_result(block_seed.names, fraction)
    free_seed.pc = _pc_result(free_seed.names, np.full(len(free_seed.names), 0.1))
    found = findings.judge([block_seed, free_seed])[2]
    assert [row["run"] for row in found["seeds"]] == [block_seed.name]
    assert found["seeds"][0]["control"] == [free_seed.name]  # the block-free seed is the control
    assert found["verdict"] == "reproduced"


# --- (c) first PC: within the model and against a control ---------------------------------


def _pc(run, inside, outside, stage3=None):
    """First-PC fractions: `inside` on the block's _out layers, `outside` elsewhere, `stage3` on stage 3 if given."""
    values = []
    for n in run.names:
        v = inside if run.names.index(BLOCK38[0]) <= run.names.index(n) <= run.names.index(BLOCK38[1]) else outside
        if stage3 is not None and n.startswith("stage3"):
            v = stage3
        values.append(v)
    return _pc_result(run.names, np.array(values))


def _with_control(block_run, control_pc):
    control = _run(14)
    control.pc = _pc_result(control.names, np.array([control_pc(n) for n in control.names]))
    return [block_run, control]


def test_first_pc_reproduced_when_the_block_beats_its_model_and_the_control():
    r = _run(block=BLOCK38)
    r.pc = _pc(r, 0.9, 0.2)
    found = findings.judge(_with_control(r, lambda n: 0.2))[2]
    row = found["seeds"][0]
    assert found["verdict"] == "reproduced"
    assert row["inside_mean"] == pytest.approx(0.9) and row["inside_peak"] == pytest.approx(0.9)
    assert row["outside_mean"] == pytest.approx(0.2) and row["control_mean"] == pytest.approx(0.2)


def test_a_block_whose_analysis_is_missing_is_listed_as_not_measured():
    """A run re-judged on outputs that lack an analysis (a block found by a later detector) is named, not dropped."""
    measured = _run(block=BLOCK38)
    measured.pc = _pc(measured, 0.9, 0.2)
    unmeasured = _run(block=BLOCK38, seed=1)
    found = findings.judge(_with_control(measured, lambda n: 0.2) + [unmeasured])
    c, d = found[2], found[3]
    assert [r["run"] for r in c["seeds"]] == [measured.name, unmeasured.name]
    assert c["seeds"][1]["note"] == "not measured (no first-PC output)" and "shows" not in c["seeds"][1]
    assert c["verdict"] == "reproduced"  # the verdict rests on the measured run alone
    assert f"{unmeasured.name}: not measured (no first-PC output)" in c["measured"]
    assert d["verdict"] == "not measured" and all(r["note"] == "not measured (no probe output)" for r in d["seeds"])


def test_first_pc_stage_effect_is_caught_by_the_control():
    # Stage 3 has a large first PC in every network, block or not: within the model the
    # block (mostly stage 3) looks dominant, but the control's stage 3 is just as high.
    r = _run(block=BLOCK38)
    r.pc = _pc(r, 0.55, 0.2, stage3=0.95)
    found = findings.judge(
        _with_control(r, lambda n: 0.95 if n.startswith("stage3") else 0.5 if n.startswith("stage2") else 0.2)
    )[2]
    assert found["seeds"][0]["within"] is True and found["seeds"][0]["against_control"] is False
    assert found["verdict"] == "not reproduced"


def test_first_pc_reports_the_svd_estimator_beside_the_exact_one_without_a_verdict():
    r = _run(block=BLOCK38)
    r.pc = _pc(r, 0.9, 0.2)
    r.pc = dataclasses.replace(r.pc, fraction_svd=_pc(r, 0.3, 0.1).fraction)  # low enough to fail the rule: no matter
    found = findings.judge(_with_control(r, lambda n: 0.2))[2]
    row = found["seeds"][0]
    assert found["verdict"] == "reproduced" and row["shows"] is True
    assert row["inside_mean_svd"] == pytest.approx(0.3) and row["outside_mean_svd"] == pytest.approx(0.1)
    assert "(TruncatedSVD estimator, no verdict: 0.30 inside vs 0.10 outside)" in found["measured"]
    # An analysis written before the estimator existed: reported as not computed, the verdict unchanged.
    r.pc = dataclasses.replace(r.pc, fraction_svd=None)
    found = findings.judge(_with_control(r, lambda n: 0.2))[2]
    assert found["verdict"] == "reproduced"
    assert found["seeds"][0]["inside_mean_svd"] is None and found["seeds"][0]["outside_mean_svd"] is None
    assert "(TruncatedSVD estimator not computed)" in found["measured"]


def test_a_run_without_a_control_does_not_count():
    r = _run(block=BLOCK38)  # no other cell on its data, no other seed
    r.pc = _pc(r, 0.9, 0.2)
    found = findings.judge([r])[2]
    assert found["verdict"] == "not measured" and found["seeds"][0]["note"] == "no control"


# --- (d) probes ----------------------------------------------------------------------------


def _probes(names, accuracy):
    from tfwd import probes

    rows = [
        {"tap": n, "kind": "post", "test_accuracy": accuracy(i, n)}
        for i, n in enumerate(n for n in names if n.endswith("_add"))
    ]
    return probes.ProbesResult(rows, {})


def test_probes_flat_inside_the_block_and_against_the_control():
    r = _run(block=BLOCK38)
    first = r.names.index(BLOCK38[0])
    # +5 points per block up to the block, then flat.
    r.probes = _probes(
        r.names, lambda i, n: min(0.3 + 0.05 * i, 0.3 + 0.05 * 7) if r.names.index(n) >= first else 0.3 + 0.05 * i
    )
    control = _run(14)
    control.probes = _probes(control.names, lambda i, n: 0.3 + 0.08 * i)  # rises through every stage
    found = findings.judge([r, control])[3]
    row = found["seeds"][0]
    assert row["gain_per_step_inside"] <= 0.25 * row["gain_per_step_outside"]
    assert row["control_gain"] > 0.1 and found["verdict"] == "reproduced"
    # A block that keeps climbing like the control is not flat.
    r.probes = _probes(r.names, lambda i, n: 0.3 + 0.05 * i)
    assert _verdicts([r, control])["d"] == "not reproduced"


# --- (e) deletion --------------------------------------------------------------------------


def _prune(depth, loss):
    """Deletion rows backwards per stage; loss(stage, block) is the accuracy lost deleting that block."""
    model = models.cifar_resnet(depth=depth, width=0.25)
    from tfwd import prune_blocks

    steps, _ = prune_blocks.deletion_schedule(model)
    full, rows = 0.8, []
    for stage, deleted in steps:
        accuracy = full - sum(loss(stage, b) for b in deleted)
        rows.append({"stage": stage, "blocks_deleted": len(deleted), "deleted": deleted, "accuracy": accuracy})
    return prune_blocks.PruneBlocksResult(full, 10000, [], rows, f"resnet{depth}-w1", {})


def test_deleting_inside_the_block_costs_little_against_the_model_and_the_control():
    r = _run(block=BLOCK38)
    r.prune_blocks = _prune(38, lambda s, b: 0.001 if s >= 2 else 0.05)
    control = _run(14)
    control.prune_blocks = _prune(14, lambda s, b: 0.1)
    found = findings.judge([r, control])[4]
    row = found["seeds"][0]
    assert row["loss_per_block_inside"] == pytest.approx(0.001) and row["loss_per_block_outside"] == pytest.approx(0.05)
    # Stage 3: 5 of 5 deletable blocks inside -> the control's loss for all of its stage 3 (1 block, 0.1).
    assert row["stages"][3]["deleted"] == 5 and row["control_cost"] == pytest.approx(0.1 + 0.1)
    assert found["verdict"] == "reproduced"
    # Deleting inside hurts as much as in the control: not reproduced.
    r.prune_blocks = _prune(38, lambda s, b: 0.04 if s >= 2 else 0.2)
    assert _verdicts([r, control])["e"] == "not reproduced"


# --- (f) cross-seed -----------------------------------------------------------------------


def test_block_layers_unique_across_seeds_against_a_block_free_pair():
    a, b = _run(38, seed=0, block=BLOCK38), _run(38, seed=1, block=BLOCK38)
    c0, c1 = _run(14, seed=0), _run(14, seed=1)
    names = a.names
    inside = np.array([a.names.index(BLOCK38[0]) <= i <= a.names.index(BLOCK38[1]) for i in range(len(names))])
    cross = {
        "resnet38": findings.CrossSeed((a.name, b.name), names, np.diag(np.where(inside, 0.3, 0.85))),
        "resnet14": findings.CrossSeed((c0.name, c1.name), c0.names, np.diag(np.full(len(c0.names), 0.8))),
    }
    found = findings.judge([a, b, c0, c1], cross)[5]
    assert [r["shows"] for r in found["seeds"]] == [True, True] and found["verdict"] == "reproduced"
    assert found["seeds"][0]["control"] == [c0.name, c1.name]
    cross["resnet14"] = findings.CrossSeed((c0.name, c1.name), c0.names, np.diag(np.full(len(c0.names), 0.35)))
    assert _verdicts([a, b, c0, c1], cross)["f"] == "not reproduced"


# --- (g) wide against deep ---------------------------------------------------------------


def test_nearest_relative_depth_matches_a_hand_computed_example():
    # 4 layers at depths 0, 1/3, 2/3, 1 against 6 at 0, .2, .4, .6, .8, 1: 1/3 is nearest .4, 2/3 nearest .6.
    assert findings.nearest_relative_depth(4, 6).tolist() == [0, 2, 3, 5]
    assert findings.nearest_relative_depth(6, 4).tolist() == [0, 1, 1, 2, 2, 3]  # .2 -> 1/3, .4 -> 1/3, .6 -> 2/3
    # Exact ties (depth .25 between 0 and .5; .75 between .5 and 1) go to the shallower layer.
    assert findings.nearest_relative_depth(5, 3).tolist() == [0, 0, 1, 1, 2]
    assert findings.nearest_relative_depth(1, 3).tolist() == [0]  # one layer: relative depth 0
    assert findings.nearest_relative_depth(3, 1).tolist() == [0] * 3
    m = np.arange(24.0).reshape(4, 6) / 24
    rows, cols = findings.matching_cka(m)
    np.testing.assert_array_equal(rows, [m[0, 0], m[1, 2], m[2, 3], m[3, 5]])
    np.testing.assert_array_equal(cols, [m[0, 0], m[1, 1], m[1, 2], m[2, 3], m[2, 4], m[3, 5]])


BLOCK14 = ("stage2_block1_conv1", "stage3_block2_out")  # stages 2-3 of ResNet-14


def _wide_deep(wide_block=None, deep_block=BLOCK38, wide_width=4.0):
    """ResNet-14 (wide) and ResNet-38 (1x) on the same 782 images, seed 0, with their planted blocks."""
    return _run(14, block=wide_block, width=wide_width), _run(38, block=deep_block)


def _cross(wide, deep, inside=0.3, outside=0.8, wide_inside=None):
    """Cross-model CKA: `outside` everywhere, `inside` on the deep model's block columns, and `wide_inside` (if
    given) on each wide block row's entry at the nearest relative depth, its matching CKA."""
    m = np.full((len(wide.names), len(deep.names)), outside)
    b = blocks.find_block_structure(deep.cka, deep.names)
    m[:, b.start : b.end + 1] = inside
    if wide_inside is not None:
        w = blocks.find_block_structure(wide.cka, wide.names)
        rows = np.arange(w.start, w.end + 1)
        m[rows, findings.nearest_relative_depth(len(wide.names), len(deep.names))[rows]] = wide_inside
    return [findings.CrossModel((wide.name, deep.name), (wide.names, deep.names), m)]


def test_wide_against_deep_shows_when_block_layers_match_less():
    wide, deep = _wide_deep()
    found = findings.judge([wide, deep], cross_models=_cross(wide, deep))[6]
    assert found["id"] == "g" and found["verdict"] == "reproduced"
    rows = {r["role"]: r for r in found["seeds"]}
    assert rows["wide"]["shows"] is None and rows["wide"]["note"] == "no block"  # the wide model does not count
    deep_row = rows["deep"]
    assert deep_row["run"] == deep.name and deep_row["other"] == wide.name and deep_row["shows"] is True
    assert deep_row["inside_mean"] == pytest.approx(0.3) and deep_row["outside_mean"] == pytest.approx(0.8)
    assert deep_row["layers_inside"] == deep.names.index(BLOCK38[1]) - deep.names.index(BLOCK38[0]) + 1
    assert "0.30 inside its block vs 0.80 outside: shows it" in found["measured"]


def test_wide_against_deep_needs_a_margin_of_0_1_on_every_model_with_a_block():
    wide, deep = _wide_deep()
    # Inside 0.05 below outside: under the margin.
    assert _verdicts([wide, deep], cross_models=_cross(wide, deep, inside=0.75))["g"] == "not reproduced"
    # Both models with a block: the deep one's block matches less, the wide one's as well as its other layers.
    wide, deep = _wide_deep(wide_block=BLOCK14)
    assert blocks.find_block_structure(wide.cka, wide.names).found
    found = findings.judge([wide, deep], cross_models=_cross(wide, deep, wide_inside=0.8))[6]
    wide_row, deep_row = found["seeds"]
    assert wide_row["inside_mean"] == pytest.approx(0.8) and wide_row["shows"] is False
    assert deep_row["inside_mean"] < 0.7 and deep_row["shows"] is True
    assert found["verdict"] == "partly reproduced"
    assert _verdicts([wide, deep], cross_models=_cross(wide, deep))["g"] == "reproduced"


def test_wide_against_deep_not_measured_without_a_block_or_a_pair():
    wide, deep = _wide_deep(deep_block=None)
    found = findings.judge([wide, deep], cross_models=_cross(wide, deep, inside=0.8))[6]
    assert found["verdict"] == "not measured" and [r["note"] for r in found["seeds"]] == ["no block"] * 2
    # Every cell 1x: no widest cell to set against the deepest.
    one_x = [_run(14), _run(38, block=BLOCK38)]
    found = findings.judge(one_x)[6]
    assert found["verdict"] == "not measured" and found["seeds"] == []
    assert found["measured"] == "no widest and deepest fitted cells (seed 0) on the same data"
    # Different data: no pair either.
    assert _verdicts([_run(14, n=3125, width=4.0), _run(38, block=BLOCK38)])["g"] == "not measured"
    # The pair exists but its cross-model CKA was not computed.
    wide, deep = _wide_deep()
    found = findings.judge([wide, deep])[6]
    assert found["verdict"] == "not measured" and "cross-model CKA not computed" in found["measured"]


def test_wide_against_deep_takes_seed_0_of_fitted_cells_only():
    wide4, deep = _wide_deep()
    wide2 = _run(14, width=2.0)
    others = [_run(14, seed=1, width=8.0), _run(56, seed=1, block=BLOCK38)]  # seed 1 only: never a candidate
    assert [(w.name, d.name) for w, d in findings.wide_deep_pairs([wide2, wide4, deep, *others])] == [
        (wide4.name, deep.name)
    ]
    wide4.train_accuracy = 0.5  # not fitted: the 2x cell is the widest
    cross = _cross(wide2, deep)
    found = findings.judge([wide2, wide4, deep, *others], cross_models=cross)[6]
    assert found["verdict"] == "reproduced" and {r["run"] for r in found["seeds"]} == {wide2.name, deep.name}
    assert found["not_fitted"] == [wide4.name]
    deep.train_accuracy = 0.5  # the deepest fitted cell is then ResNet-14 itself: no pair
    assert findings.wide_deep_pairs([wide2, wide4, deep]) == []
    assert _verdicts([wide2, wide4, deep], cross_models=cross)["g"] == "not measured"


def test_wide_against_deep_refuses_a_matrix_of_the_wrong_shape():
    wide, deep = _wide_deep()
    b = blocks.find_block_structure(deep.cka, deep.names)
    with pytest.raises(ValueError, match=r"`matrix` must be \(len\(row_names\), len\(col_names\)\) = \(3, 4\)"):
        findings.wide_against_deep(np.zeros((4, 3)), list("abc"), list("abcd"), b, b)


# --- sensitivity --------------------------------------------------------------------------


def test_verdicts_are_recomputed_at_the_neighbouring_contrast_thresholds():
    names = list(_names(38))
    low, high = findings.SENSITIVITY
    assert (low, high) == pytest.approx((blocks.MIN_CONTRAST - 0.05, blocks.MIN_CONTRAST + 0.05))
    # A block whose edge stands just under the threshold: found at the lower setting only.
    weak = np.maximum(_heatmap(names, BLOCK38), 0.95 - (blocks.MIN_CONTRAST - 0.025))
    np.fill_diagonal(weak, 1.0)
    b = blocks.find_block_structure(weak, names, min_contrast=0.0)
    assert low < b.peak_contrast < blocks.MIN_CONTRAST
    series = [_run(14, seed=s) for s in (0, 1)] + [_run(38, seed=s, cka=weak) for s in (0, 1)]
    found = findings.judge_with_sensitivity(series)[0]
    assert found["verdict"] == "not reproduced"
    assert found["sensitivity"] == {f"{low:.2f}": "reproduced", f"{high:.2f}": "not reproduced"}


def test_nothing_to_judge():
    judged = findings.judge([_run(14)])
    assert [f["id"] for f in judged] == list("abcdefg")
    assert [f["verdict"] for f in judged] == ["not measured"] * 7


# --- the learning-rate arm ---------------------------------------------------------------


def _reference(run, cka=None, val=0.5):
    """`run` trained with the reference code's recipe: same cell and seed, another schedule."""
    config = dataclasses.replace(
        run.config,
        train=dataclasses.replace(run.config.train, learning_rate=0.01, warmup_epochs=0, decay_every="epoch"),
    )
    return dataclasses.replace(run, config=config, cka=run.cka if cka is None else cka, val_accuracy=val)


def _arm_setting():
    """ResNet-38 seeds 0 and 1 with a block whose first PC dominates, ResNet-14 seeds 0 and 1 as controls,
    cross-seed CKA low inside the block: (c) and (f) reproduced with the spec's recipe."""
    a, b = (_run(38, seed=s, block=BLOCK38) for s in (0, 1))
    controls = [_run(14, seed=s) for s in (0, 1)]
    for r in (a, b):
        r.pc = _pc(r, 0.9, 0.2)
        r.val_accuracy = 0.4
    for c in controls:
        c.pc = _pc_result(c.names, np.full(len(c.names), 0.2))
    inside = np.array([a.names.index(BLOCK38[0]) <= i <= a.names.index(BLOCK38[1]) for i in range(len(a.names))])
    cross = {
        "resnet38": findings.CrossSeed((a.name, b.name), a.names, np.diag(np.where(inside, 0.3, 0.85))),
        "resnet14": findings.CrossSeed(tuple(c.name for c in controls), controls[0].names, np.diag([0.8] * 30)),
    }
    return [a, b, *controls], cross


def test_the_arm_replaces_the_runs_of_the_same_cell_and_seed_only():
    runs_, _ = _arm_setting()
    replaced = _reference(runs_[0])
    other_cell = _reference(_run(56, seed=0))
    swapped, names = findings.substitute(runs_, [replaced, other_cell])
    assert swapped[0] is replaced and swapped[1:] == runs_[1:] and names == [runs_[0].name]


def test_an_arm_without_the_block_changes_the_verdicts_and_the_better_validated_recipe_decides():
    runs_, cross = _arm_setting()
    flat = _reference(runs_[0], cka=_heatmap(runs_[0].names), val=0.45)  # no block with the other recipe
    flat.pc = _pc_result(flat.names, np.full(len(flat.names), 0.2))  # now seed 1's control within its cell
    compared = findings.judge_arm(runs_, cross, [flat])
    by_id = {c["id"]: c for c in compared["claims"]}
    assert list(by_id) == list(findings.ARM_CLAIMS)
    assert (by_id["c"]["base"], by_id["c"]["arm"], by_id["c"]["changed"]) == ("reproduced", "reproduced", False)
    assert [r["run"] for r in next(f for f in findings.judge(runs_) if f["id"] == "c")["seeds"]] == [
        r.name for r in runs_[:2]
    ]
    # Seed 0 has no block any more, and the cross-seed pair (now of two recipes) is dropped: (f) has no run left.
    assert (by_id["f"]["base"], by_id["f"]["arm"], by_id["f"]["changed"]) == ("reproduced", "not measured", True)
    assert compared["depends"] == ["f"]
    assert compared["validation"] == {"base": pytest.approx(0.4), "arm": pytest.approx(0.45)}
    assert compared["rests_on"] == "arm"
    (row,) = compared["runs"]
    assert row["run"] == runs_[0].name
    assert row["base"]["block"]["found"] and not row["arm"]["block"]["found"]
    assert row["base"]["first_pc"]["inside_mean"] == pytest.approx(0.9) and row["arm"]["first_pc"] is None
    # The spec's recipe validating better keeps the findings on it.
    flat.val_accuracy = 0.3
    assert findings.judge_arm(runs_, cross, [flat])["rests_on"] == "base"


def test_an_arm_that_reproduces_the_runs_changes_nothing():
    runs_, cross = _arm_setting()
    arm = [_reference(r) for r in runs_[:2]]
    arm_cross = {"resnet38": dataclasses.replace(cross["resnet38"])}
    compared = findings.judge_arm(runs_, cross, arm, arm_cross)
    assert [c["changed"] for c in compared["claims"]] == [False] * 4 and compared["depends"] == []
    assert compared["rests_on"] is None
    assert [c["arm"] for c in compared["claims"] if c["id"] in "cf"] == ["reproduced", "reproduced"]
    # An arm run that did not fit: its block is reported, but it counts nowhere (the claims lose seed 0).
    arm[0].train_accuracy = 0.5
    compared = findings.judge_arm(runs_, cross, arm, arm_cross)
    row = compared["runs"][0]["arm"]
    assert row["fitted"] is False and row["block"]["found"] and row["first_pc"] is None
