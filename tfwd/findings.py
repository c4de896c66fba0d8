"""The paper's claims (a)-(g), judged on analysed runs by rules fixed before the runs.

The rules are those of docs/science/rules.md, committed before the science spec's
runs were trained; docs/science/README.md repeats them. In short:

- Every claim is measured on every seed of every cell (an architecture on a data
  subset). Blocks come from `tfwd.blocks.find_block_structure` (defaults; its peak
  contrast is reported for every run), and every verdict is recomputed with the
  contrast threshold at 0.30 and 0.40 (`SENSITIVITY`).
- (a) per depth (width) series and seed: the deepest (widest) cell's block fraction
  exceeds the smallest's. (b) per architecture on several subsets and seed: the
  fraction on the smallest subset exceeds that on the largest.
- (c)-(f) compare the block's layers with the model's other layers (the paper's
  comparison) and with the same stage, same kind of layer, of a control without a
  block: the cell's other seeds without a block, else the block-free runs of the
  shallowest cell on the same data. A run shows a claim when both comparisons pass;
  a run without a control does not count.
- (c) residual stream (`_out`) first-PC fraction: block mean >= 0.5, >= 0.2 above
  the model's other `_out` layers and >= 0.2 above the control's same-stage mean.
  The reference code's TruncatedSVD estimator of the fraction is reported beside
  it (means inside and outside), without a verdict of its own.
- (d) post-residual (`_add`) probes: gain per step inside the block <= a quarter of
  the gain per step outside (or < 0.5 points), and the gain across the block <= half
  the control's gain over the same fractions of the same stages.
- (e) deletion backwards within stages: loss per deleted block inside < half the
  loss per block outside, and the loss from deleting each stage's trailing blocks
  inside the block <= half the control's loss for the same fraction of that stage.
- (f) same-layer cross-seed CKA: the block's mean is >= 0.1 below the model's other
  layers and >= 0.1 below the control pair's same-stage, same-kind mean.
- (g) wide against deep: seed 0 of the widest and of the deepest fitted cell on the same
  data; each layer's CKA with the other model's layer at the nearest relative depth
  (index / (layers - 1)); a model with a block shows it when its block's mean is >= 0.1
  below that of its layers in no block (no control).

- Learning-rate arm (`judge_arm`): (c)-(f) judged again with another recipe's runs in place
  of the runs of the same cells and seeds; when a verdict changes, the findings rest on the
  recipe of higher mean validation accuracy over those cells, and both verdicts are shown.

Verdicts over the runs (or series and seeds) that count: "reproduced" (all show
it), "partly reproduced" (some), "not reproduced" (none), "not measured" (none count).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tfwd import blocks, models

if TYPE_CHECKING:  # the analyses import TensorFlow; the rules only read their results
    from tfwd import pc, probes, prune_blocks

PAPER = {
    "a": "Figure 1: blocks appear as depth (ResNet-110, 164) or width (ResNet-38 4x-10x) grows.",
    "b": "Figure 2: with 1/4 and 1/16 of CIFAR-10, blocks appear in smaller models (e.g. ResNet-38 1x at 1/16).",
    "c": "Figure 3: first-PC variance fraction ~0.9 (peak) inside blocks, mostly <= 0.25 outside.",
    "d": "Figure 4: post-residual probe accuracy plateaus through the block (ResNet-26 10x).",
    "e": "Figure 5: deleting blocks inside the block structure barely changes test accuracy.",
    "f": "Figure 6: without blocks, same-depth layers match across seeds; block layers do not.",
    "g": "Figure 6: across wide and deep models, layers outside blocks match at the same relative depth; block "
    "layers do not.",
}
CLAIMS = {
    "a": "Block structure grows with depth and width",
    "b": "Less training data, block structure in smaller models",
    "c": "Inside blocks the first PC dominates",
    "d": "Probe accuracy is flat inside blocks",
    "e": "Deleting blocks inside the block structure costs little",
    "f": "Block layers are unique to each model",
    "g": "Block layers are unique across wide and deep models",
}
# Detector contrast thresholds the verdicts are recomputed at: the rule's threshold -0.05 and +0.05.
SENSITIVITY = (round(blocks.MIN_CONTRAST - 0.05, 2), round(blocks.MIN_CONTRAST + 0.05, 2))
FIT_MIN = 0.9  # training accuracy a run needs for its heatmap to count (rules v2)
PC_MIN, PC_MARGIN = 0.5, 0.2
PROBE_RATIO, PROBE_FLOOR, PROBE_CONTROL = 0.25, 0.005, 0.5
DELETION_RATIO, DELETION_CONTROL = 0.5, 0.5
CROSS_MARGIN = 0.1
ARM_CLAIMS = ("c", "d", "e", "f")  # what the learning-rate arm re-judges (rules.md)


@dataclasses.dataclass
class JudgedRun:
    """One analysed run, as the rules see it (tfwd.report builds these).

    Attributes:
        name: run directory name.
        config: its tfwd.runs.RunConfig.
        names: the layers of the within-model CKA (taps="all"), in depth order.
        cka: (L, L) within-model CKA.
        pc: the tfwd.pc.PCResult of its first-PC analysis (`names`, `fraction`, optionally
            `fraction_svd`, ...) or None.
        probes: the tfwd.probes.ProbesResult of its linear probes (`rows`: "tap", "kind", "test_accuracy", ...)
            or None.
        prune_blocks: the tfwd.prune_blocks.PruneBlocksResult of its block deletion (`full_accuracy`, `steps`:
            [{"stage", "blocks_deleted", "deleted" (block names, last first), "accuracy"}]) or None.
        train_accuracy: final training accuracy (results.json "accuracy"); None when not known, which
            counts as fitted.
        test_accuracy, val_accuracy: results.json's, where known (the learning-rate arm reports them).
    """

    name: str
    config: Any
    names: list[str]
    cka: np.ndarray
    pc: pc.PCResult | None = None
    probes: probes.ProbesResult | None = None
    prune_blocks: prune_blocks.PruneBlocksResult | None = None
    train_accuracy: float | None = None
    test_accuracy: float | None = None
    val_accuracy: float | None = None

    @property
    def fitted(self) -> bool:
        """Whether the run fitted its training data (rules v2): below FIT_MIN its blocks count nowhere."""
        return self.train_accuracy is None or self.train_accuracy >= FIT_MIN

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def cell(self) -> tuple:
        """(dataset, train examples, depth, width, residual): the runs of a cell differ only in seed."""
        c = self.config
        return (c.data.dataset, c.data.train_examples or 0, c.model.depth, c.model.width, c.model.residual)


@dataclasses.dataclass
class CrossSeed:
    """CKA between seeds 0 and 1 of one cell: rows seed 0's layers, columns seed 1's."""

    runs: tuple[str, str]
    names: list[str]
    matrix: np.ndarray


@dataclasses.dataclass
class CrossModel:
    """CKA between two models' layers: rows the layers of runs[0] (names[0]), columns those of runs[1] (names[1])."""

    runs: tuple[str, str]
    names: tuple[list[str], list[str]]
    matrix: np.ndarray


def nearest_relative_depth(n_from: int, n_to: int) -> np.ndarray:
    """For each of `n_from` layers, the index of the layer among `n_to` at the nearest relative depth.

    The relative depth of layer i of L is i / (L - 1) (0 for a single layer). Depths are compared in
    integers (|j (n_from - 1) - i (n_to - 1)|), so a tie is exact and goes to the shallower layer.

    Example:
        >>> nearest_relative_depth(3, 5).tolist(), nearest_relative_depth(5, 3).tolist()
        ([0, 2, 4], [0, 0, 1, 1, 2])

    Returns:
        (n_from,) int array of indices in [0, n_to).
    """
    if n_from < 1 or n_to < 1:
        raise ValueError(f"Both models need at least one layer. Received: n_from={n_from}, n_to={n_to}")
    i, j = np.arange(n_from)[:, None], np.arange(n_to)[None, :]
    return np.argmin(np.abs(j * max(n_from - 1, 1) - i * max(n_to - 1, 1)), axis=1)


def matching_cka(matrix) -> tuple[np.ndarray, np.ndarray]:
    """The matching CKA of each layer of both models of a cross-model CKA matrix.

    Args:
        matrix: (R, C) CKA between the R layers of one model (rows) and the C layers of another (columns).

    Returns:
        ((R,) each row's CKA with the column at the nearest relative depth, (C,) each column's with the row at
        the nearest relative depth); see `nearest_relative_depth`.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"`matrix` must be a 2-D cross-model CKA matrix. Received: shape {m.shape}")
    r, c = m.shape
    return m[np.arange(r), nearest_relative_depth(r, c)], m[nearest_relative_depth(c, r), np.arange(c)]


def wide_against_deep(
    matrix,
    row_names: Sequence[str],
    col_names: Sequence[str],
    row_block: blocks.BlockStructure,
    col_block: blocks.BlockStructure,
) -> list[dict[str, Any]]:
    """Claim (g) on one pair of models: does each model's block match the other model less than its other layers?

    Args:
        matrix: (R, C) cross-model CKA, rows the first model's layers, columns the second's.
        row_names, col_names: the R and C layer names, in depth order (those the blocks were found on).
        row_block, col_block: each model's block structure (tfwd.blocks.find_block_structure) over those layers.

    Returns:
        One dict per model (rows first): "inside_mean" (mean matching CKA of the largest block's layers),
        "outside_mean" (of the layers in no block), "layers_inside", "layers_outside", and "shows" (True when
        inside_mean <= outside_mean - 0.1; None, with a "note", for a model without a block or without a layer
        outside its blocks: such a model does not count).
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(row_names), len(col_names)):
        raise ValueError(
            f"`matrix` must be (len(row_names), len(col_names)) = ({len(row_names)}, {len(col_names)}). "
            f"Received: shape {m.shape}"
        )
    out = []
    for matching, block in zip(matching_cka(m), (row_block, col_block)):
        inside = [i for i in range(len(matching)) if block.contains(i)]
        outside = [i for i in range(len(matching)) if not any(b.contains(i) for b in block.blocks)]
        m_in, m_out = _mean(matching[inside]), _mean(matching[outside])
        row = {"inside_mean": m_in, "outside_mean": m_out, "layers_inside": len(inside), "layers_outside": len(outside)}
        if not inside:
            row.update(shows=None, note="no block")
        elif not outside:
            row.update(shows=None, note="no layer outside its blocks")
        else:
            row["shows"] = bool(m_out - m_in >= CROSS_MARGIN)
        out.append(row)
    return out


def wide_deep_pairs(runs_: Sequence[JudgedRun], fit_min: float = FIT_MIN) -> list[tuple[JudgedRun, JudgedRun]]:
    """Claim (g)'s pairs: per data (dataset, train examples), seed 0 of the widest and of the deepest fitted cell.

    Only fitted seed-0 runs are candidates. Among equally wide cells the shallowest is the widest, among equally
    deep ones the narrowest is the deepest; a pair exists when the widest is wider than the deepest and the
    deepest deeper than the widest (on data where every cell is 1x there is none).

    Returns:
        [(wide run, deep run)], one per data subset that has such a pair.
    """
    by_data = defaultdict(list)
    for r in runs_:
        if r.seed == 0 and (r.train_accuracy is None or r.train_accuracy >= fit_min):
            by_data[r.cell[:2]].append(r)
    pairs = []
    for members in by_data.values():
        wide = max(members, key=lambda r: (r.config.model.width, -r.config.model.depth, r.config.model.residual))
        deep = max(members, key=lambda r: (r.config.model.depth, -r.config.model.width, r.config.model.residual))
        if wide.config.model.width > deep.config.model.width and deep.config.model.depth > wide.config.model.depth:
            pairs.append((wide, deep))
    return pairs


def _verdict(ok: Sequence[bool]) -> str:
    if not ok:
        return "not measured"
    return "reproduced" if all(ok) else "partly reproduced" if any(ok) else "not reproduced"


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _position(name: str) -> tuple[int, str]:
    """(stage, kind): stage from tfwd.models.stage_of, kind the name after its block prefix."""
    stage = models.stage_of(name)
    kind = name.split("_", 2)[2] if stage > 0 else name
    return stage, kind


def _blocks_of(name: str) -> str | None:
    """ "stage2_block3" for "stage2_block3_add"; None outside residual blocks."""
    return "_".join(name.split("_", 2)[:2]) if models.stage_of(name) > 0 else None


class _Judge:
    """The rules at one detector setting."""

    def __init__(
        self,
        runs_: Sequence[JudgedRun],
        cross: dict[str, CrossSeed],
        detector: dict[str, Any],
        fit_min: float = FIT_MIN,
    ):
        fitted = [r.train_accuracy is None or r.train_accuracy >= fit_min for r in runs_]
        self.runs = [r for r, ok in zip(runs_, fitted) if ok]  # an unfitted run is neither judged nor a control
        self.not_fitted = [r.name for r, ok in zip(runs_, fitted) if not ok]
        self.cross = cross
        self.blocks = {r.name: blocks.find_block_structure(r.cka, r.names, **detector) for r in self.runs}
        self.cells = defaultdict(list)
        for r in self.runs:
            self.cells[r.cell].append(r)

    def block(self, run: JudgedRun) -> blocks.BlockStructure:
        return self.blocks[run.name]

    def fraction(self, run: JudgedRun) -> float:
        b = self.block(run)
        return float(b.fraction) if b.found else 0.0

    def inside(self, run: JudgedRun, name: str) -> bool:
        """Whether layer `name` lies in the run's largest block (the block the claims judge)."""
        return name in run.names and self.block(run).contains(run.names.index(name))

    def outside(self, run: JudgedRun, name: str) -> bool:
        """Whether layer `name` lies in none of the run's blocks (a second block is neither inside nor outside)."""
        if name not in run.names:
            return False
        index = run.names.index(name)
        return not any(b.contains(index) for b in self.block(run).blocks)

    # --- controls -----------------------------------------------------------------------

    def control_cell(self, run: JudgedRun, pair: bool = False) -> list[JudgedRun]:
        """The control runs of `run` (see the module docstring); pair=True asks for a cell
        whose seeds 0 and 1 both have no block (for cross-seed CKA)."""
        if not pair:
            same = [r for r in self.cells[run.cell] if r is not run and not self.block(r).found]
            if same:
                return same
        data = run.cell[:2] + run.cell[3:]
        cells = sorted((c for c in self.cells if c[:2] + c[3:] == data), key=lambda c: c[2])
        if not cells or cells[0] == run.cell:
            return []  # the shallowest cell is the run's own: only its other seeds could serve
        free = [r for r in self.cells[cells[0]] if not self.block(r).found]
        if pair:
            free = [r for r in free if r.seed in (0, 1)]
            return free if {r.seed for r in free} == {0, 1} else []
        return free

    @staticmethod
    def same_position_mean(layers: Sequence[str], control: Sequence[tuple[Sequence[str], Sequence[float]]]) -> float:
        """Mean over `layers` of each control's mean over its layers of the same stage and kind."""
        per_layer = []
        for name in layers:
            where = _position(name)
            values = [_mean(v for n, v in zip(names, vals) if _position(n) == where) for names, vals in control]
            per_layer.append(_mean(values))
        return _mean(per_layer)

    # --- the claims ---------------------------------------------------------------------

    def growth(self, key: str, axis: str) -> tuple[list[dict], list[bool]]:
        """(a) and (b): per series and seed, the block fraction at the two ends of the series."""
        fixed = {"depth": (0, 1, 3, 4), "width": (0, 1, 2, 4), "data": (0, 2, 3, 4)}[axis]
        position = {"depth": 2, "width": 3, "data": 1}[axis]
        series = defaultdict(list)
        for cell in self.cells:
            series[tuple(cell[i] for i in fixed)].append(cell)
        rows, ok = [], []
        for cells in series.values():
            if len({c[position] for c in cells}) < 2:
                continue
            cells = sorted(cells, key=lambda c: c[position] or 10**9)
            seeds = set.intersection(*({r.seed for r in self.cells[c]} for c in cells))
            for seed in sorted(seeds):
                members = [next(r for r in self.cells[c] if r.seed == seed) for c in cells]
                fractions = [self.fraction(r) for r in members]
                shows = fractions[0] > fractions[-1] if axis == "data" else fractions[-1] > fractions[0]
                ok.append(shows)
                rows.append(
                    {
                        "axis": axis,
                        "seed": seed,
                        "runs": [r.name for r in members],
                        "fractions": fractions,
                        "peak_contrasts": [self.block(r).peak_contrast for r in members],
                        "shows": shows,
                        "text": f"{axis} series, seed {seed}: "
                        + ", ".join(f"{_short(r)} {f:.2f}" for r, f in zip(members, fractions)),
                    }
                )
        return rows, ok

    def first_pc(self, run: JudgedRun) -> dict[str, Any] | None:
        if run.pc is None:
            return None
        names, fraction = list(run.pc.names), np.asarray(run.pc.fraction, dtype=float)
        outs = [(n, f) for n, f in zip(names, fraction) if n.endswith("_out")]
        inside = [(n, f) for n, f in outs if self.inside(run, n)]
        if not inside:
            return {"note": "no block output inside the block"}
        outside = [f for n, f in outs if self.outside(run, n)]
        m_in, peak = _mean(f for _, f in inside), float(max(f for _, f in inside))
        m_out = _mean(outside)
        # The reference code's estimator, reported only: None where the analysis predates it.
        svd = run.pc.fraction_svd
        svd = None if svd is None else dict(zip(names, np.asarray(svd, dtype=float)))
        controls = [c for c in self.control_cell(run) if c.pc is not None]
        ctrl = self.same_position_mean([n for n, _ in inside], [(c.pc.names, c.pc.fraction) for c in controls])
        row = {
            "inside_mean": m_in,
            "inside_peak": peak,
            "outside_mean": m_out,
            "control_mean": ctrl,
            "control": [c.name for c in controls],
            "layers_inside": len(inside),
            "inside_mean_svd": None if svd is None else _mean(svd[n] for n, _ in inside),
            "outside_mean_svd": None if svd is None else _mean(svd[n] for n, _ in outs if self.outside(run, n)),
        }
        within = m_in >= PC_MIN and m_in - m_out >= PC_MARGIN
        return _judged(row, within, ctrl == ctrl and m_in - ctrl >= PC_MARGIN, bool(controls))

    def probes(self, run: JudgedRun) -> dict[str, Any] | None:
        if run.probes is None or not run.config.model.residual:
            return None
        post = [p for p in run.probes.rows if p["kind"] == "post"]
        acc = [float(p["test_accuracy"]) for p in post]
        inside = [i for i, p in enumerate(post) if self.inside(run, p["tap"])]
        if not inside:
            return {"note": "no probed add inside the block"}
        first, last = min(inside), max(inside)
        start = first - 1 if first > 0 else first
        k_in, k_out = last - start, len(post) - 1 - (last - start)
        if k_in == 0 or k_out == 0:
            return {"note": "no probe step inside or outside the block"}
        gain_in = acc[last] - acc[start]
        step_in, step_out = gain_in / k_in, (acc[-1] - acc[0] - gain_in) / k_out
        controls = [c for c in self.control_cell(run) if c.probes is not None]
        fractions = self._stage_fractions(run, [p["tap"] for p in post])
        ctrl = _mean(sum(f * _stage_gain(c, s) for s, f in fractions.items()) for c in controls)
        row = {
            "gain_inside": gain_in,
            "steps_inside": k_in,
            "gain_per_step_inside": step_in,
            "gain_per_step_outside": step_out,
            "steps_outside": k_out,
            "control_gain": ctrl,
            "control": [c.name for c in controls],
        }
        within = step_in <= max(PROBE_RATIO * step_out, PROBE_FLOOR)
        return _judged(row, within, ctrl == ctrl and gain_in <= PROBE_CONTROL * ctrl, bool(controls))

    def _stage_fractions(self, run: JudgedRun, adds: Sequence[str]) -> dict[int, float]:
        """Per stage, the fraction of its residual blocks whose add lies inside the block."""
        per_stage = defaultdict(list)
        for name in adds:
            per_stage[models.stage_of(name)].append(self.inside(run, name))
        return {s: float(np.mean(v)) for s, v in per_stage.items() if any(v)}

    def deletion(self, run: JudgedRun) -> dict[str, Any] | None:
        if run.prune_blocks is None or not run.config.model.residual:
            return None
        curves = _deletion_curves(run)
        full = float(run.prune_blocks.full_accuracy)
        drops_in, drops_out, stages = [], [], {}
        for stage, (order, accuracies) in curves.items():
            previous = full
            for block, accuracy in zip(order, accuracies):
                if self.inside(run, f"{block}_add"):
                    drops_in.append(previous - accuracy)
                elif self.outside(run, f"{block}_add"):
                    drops_out.append(previous - accuracy)
                previous = accuracy
            k = 0
            while k < len(order) and self.inside(run, f"{order[k]}_add"):
                k += 1
            if k:
                stages[stage] = (k, len(order), full - accuracies[k - 1])
        if not stages:
            return {"note": "no deletable block inside the block at the end of a stage"}
        if not drops_out:
            return {"note": "no deletable block outside the block"}
        controls = [c for c in self.control_cell(run) if c.prune_blocks is not None]
        cost = sum(loss for _, _, loss in stages.values())
        ctrl = _mean(sum(_control_loss(c, s, k / n) for s, (k, n, _) in stages.items()) for c in controls)
        row = {
            "loss_per_block_inside": _mean(drops_in),
            "loss_per_block_outside": _mean(drops_out),
            "blocks_inside": len(drops_in),
            "blocks_outside": len(drops_out),
            "stage_cost": cost,
            "control_cost": ctrl,
            "stages": {s: {"deleted": k, "deletable": n, "loss": loss} for s, (k, n, loss) in stages.items()},
            "control": [c.name for c in controls],
        }
        within = _mean(drops_in) < DELETION_RATIO * _mean(drops_out)
        return _judged(row, within, ctrl == ctrl and cost <= DELETION_CONTROL * ctrl, bool(controls))

    def cross_seed(self, run: JudgedRun) -> dict[str, Any] | None:
        pair = next((p for p in self.cross.values() if run.name in p.runs), None)
        if pair is None:
            return None
        diag = np.diag(pair.matrix)
        inside = [i for i, n in enumerate(pair.names) if self.inside(run, n)]
        if not inside:
            return {"note": "no layer inside the block"}
        outside = [i for i, n in enumerate(pair.names) if self.outside(run, n)]
        m_in, m_out = _mean(diag[inside]), _mean(diag[outside])
        controls = self.control_cell(run, pair=True)
        names = {r.name for r in controls}
        ctrl_pair = next((p for p in self.cross.values() if set(p.runs) <= names), None) if controls else None
        ctrl = (
            self.same_position_mean([pair.names[i] for i in inside], [(ctrl_pair.names, np.diag(ctrl_pair.matrix))])
            if ctrl_pair
            else float("nan")
        )
        row = {
            "inside_mean": m_in,
            "outside_mean": m_out,
            "control_mean": ctrl,
            "control": list(ctrl_pair.runs) if ctrl_pair else [],
        }
        return _judged(
            row, m_out - m_in >= CROSS_MARGIN, ctrl == ctrl and ctrl - m_in >= CROSS_MARGIN, ctrl_pair is not None
        )

    def wide_deep(self, cross_models: Sequence[CrossModel], fit_min: float) -> tuple[list[dict], list[bool], str]:
        """(g): rows per model of each wide/deep pair, the shows of the models that count, and the text."""
        pairs = wide_deep_pairs(self.runs, fit_min)
        if not pairs:
            return [], [], "no widest and deepest fitted cells (seed 0) on the same data"
        rows, ok, texts = [], [], []
        for wide, deep in pairs:
            pair = next((p for p in cross_models if tuple(p.runs) == (wide.name, deep.name)), None)
            label = f"{_short(wide)} against {_short(deep)}"
            if pair is None:
                texts.append(f"{label}: cross-model CKA not computed")
                continue
            if [list(n) for n in pair.names] != [wide.names, deep.names]:
                texts.append(f"{label}: cross-model CKA not on the layers of the within-model CKA")
                continue
            measured = wide_against_deep(pair.matrix, wide.names, deep.names, self.block(wide), self.block(deep))
            parts = []
            for role, run, other, row in zip(("wide", "deep"), (wide, deep), (deep, wide), measured):
                b = self.block(run)
                row = {"run": run.name, "seed": run.seed, "role": role, "other": other.name, **row}
                row.update(block_fraction=b.fraction, contrast=b.contrast)
                rows.append(row)
                if row["shows"] is None:
                    parts.append(f"{role}: {row['note']}")
                    continue
                ok.append(row["shows"])
                mark = "shows it" if row["shows"] else "does not"
                parts.append(
                    f"{role}: matching CKA {row['inside_mean']:.2f} inside its block vs {row['outside_mean']:.2f} "
                    f"outside: {mark}"
                )
            texts.append(f"{label}: " + "; ".join(parts))
        return rows, ok, "; ".join(texts)


def _short(run: JudgedRun) -> str:
    m = run.config.model
    n = run.config.data.train_examples
    return f"ResNet-{m.depth} ({m.width:g}x{'' if m.residual else ', plain'}){f' on {n:,}' if n else ''}"


def _judged(row: dict, within: bool, control: bool, has_control: bool) -> dict:
    row = {**row, "within": bool(within), "against_control": bool(control) if has_control else None}
    row["shows"] = bool(within and control) if has_control else None
    if not has_control:
        row["note"] = "no control"
    return row


def _stage_gain(run: JudgedRun, stage: int) -> float:
    """A control's post-residual probe gain over one stage (from the add before it, or its own first add)."""
    post = [p for p in run.probes.rows if p["kind"] == "post"]
    stages = [models.stage_of(p["tap"]) for p in post]
    members = [i for i, s in enumerate(stages) if s == stage]
    if not members:
        return float("nan")
    start = members[0] - 1 if members[0] > 0 else members[0]
    return float(post[members[-1]]["test_accuracy"]) - float(post[start]["test_accuracy"])


def _deletion_curves(run: JudgedRun) -> dict[int, tuple[list[str], list[float]]]:
    """Per stage: the deletable blocks in deletion order (last first) and the accuracy after each."""
    by_stage = defaultdict(list)
    for r in run.prune_blocks.steps:
        by_stage[int(r["stage"])].append(r)
    curves = {}
    for stage, rows in by_stage.items():
        rows = sorted(rows, key=lambda r: int(r["blocks_deleted"]))
        order = list(rows[-1]["deleted"])
        curves[stage] = (order, [float(r["accuracy"]) for r in rows])
    return curves


def _control_loss(run: JudgedRun, stage: int, fraction: float) -> float:
    """A control's accuracy loss after deleting `fraction` of a stage's deletable blocks (interpolated)."""
    curves = _deletion_curves(run)
    if stage not in curves:
        return float("nan")
    _, accuracies = curves[stage]
    full = float(run.prune_blocks.full_accuracy)
    xs = np.arange(len(accuracies) + 1) / len(accuracies)
    losses = np.r_[0.0, full - np.asarray(accuracies)]
    return float(np.interp(fraction, xs, losses))


def _per_run(judge: _Judge, key: str, measure) -> dict[str, Any]:
    seeds, ok = [], []
    for run in judge.runs:
        b = judge.block(run)
        if not b.found:
            continue
        row = measure(run) or {"note": f"not measured (no {_ANALYSIS[key]} output)"}
        row = {"run": run.name, "seed": run.seed, "block_fraction": b.fraction, "contrast": b.contrast, **row}
        seeds.append(row)
        if row.get("shows") is not None:
            ok.append(row["shows"])
    return {"seeds": seeds, "ok": ok}


_MEASURES = {"c": "first_pc", "d": "probes", "e": "deletion", "f": "cross_seed"}
_ANALYSIS = {"c": "first-PC", "d": "probe", "e": "block-deletion", "f": "cross-seed CKA"}  # what each one reads


def _describe(key: str, rows: list[dict]) -> str:
    def fmt(r):
        if "note" in r and "within" not in r:
            return f"{r['run']}: {r['note']}"
        tail = "" if r.get("against_control") is not None else " (no control)"
        mark = {True: "shows it", False: "does not", None: "not counted"}[r.get("shows")]
        if key == "c":
            body = (
                f"first PC mean {r['inside_mean']:.2f} (peak {r['inside_peak']:.2f}) inside vs {r['outside_mean']:.2f} "
                f"outside, control {r['control_mean']:.2f}"
            )
            if r.get("inside_mean_svd") is None:
                body += " (TruncatedSVD estimator not computed)"
            else:
                body += (
                    f" (TruncatedSVD estimator, no verdict: {r['inside_mean_svd']:.2f} inside vs "
                    f"{r['outside_mean_svd']:.2f} outside)"
                )
        elif key == "d":
            body = (
                f"{100 * r['gain_per_step_inside']:+.2f} points per step inside vs "
                f"{100 * r['gain_per_step_outside']:+.2f} "
                f"outside; across the block {100 * r['gain_inside']:+.1f} vs control {100 * r['control_gain']:+.1f}"
            )
        elif key == "e":
            body = (
                f"{100 * r['loss_per_block_inside']:.1f} points per deleted block inside vs "
                f"{100 * r['loss_per_block_outside']:.1f} outside; stage tails {100 * r['stage_cost']:.1f} vs control "
                f"{100 * r['control_cost']:.1f}"
            )
        else:
            body = (
                f"same-layer CKA across seeds {r['inside_mean']:.2f} inside vs {r['outside_mean']:.2f} outside, "
                f"control {r['control_mean']:.2f}"
            )
        return f"{r['run']}: {body}{tail}: {mark}"

    return "; ".join(fmt(r) for r in rows) if rows else "no run with a detected block"


def judge(
    runs_: Sequence[JudgedRun],
    cross: dict[str, CrossSeed] | None = None,
    detector: dict | None = None,
    fit_min: float = FIT_MIN,
    cross_models: Sequence[CrossModel] = (),
) -> list[dict]:
    """The seven claims at one detector setting, in the paper's order.

    Args:
        runs_: the analysed runs.
        cross: cross-seed CKA per cell (seeds 0 and 1).
        detector: keyword arguments of find_block_structure (default: its defaults).
        fit_min: training accuracy below which a run counts nowhere (rules v2: 0.9).
        cross_models: cross-model CKA of the pairs of `wide_deep_pairs` (rows the wide run), for (g).

    Returns:
        [{"id", "claim", "paper", "verdict", "measured" (text), "seeds" (per-run or
        per-series rows), "not_fitted" (runs left out)}].
    """
    j = _Judge(runs_, cross or {}, detector or {}, fit_min)
    out = []
    depth_rows, depth_ok = j.growth("a", "depth")
    width_rows, width_ok = j.growth("a", "width")
    rows = depth_rows + width_rows
    text = "; ".join(r["text"] for r in rows) or "no depth or width series"
    if not width_rows:
        text += " (width: not measured, no width series)"
    out.append(_finding("a", _verdict(depth_ok + width_ok), text + " (block fraction of layers)", rows))
    data_rows, data_ok = j.growth("b", "data")
    out.append(
        _finding(
            "b", _verdict(data_ok), "; ".join(r["text"] for r in data_rows) or "no model on two subset sizes", data_rows
        )
    )
    for key, method in _MEASURES.items():
        measured = _per_run(j, key, getattr(j, method))
        out.append(_finding(key, _verdict(measured["ok"]), _describe(key, measured["seeds"]), measured["seeds"]))
    wide_rows, wide_ok, text = j.wide_deep(cross_models, fit_min)
    out.append(_finding("g", _verdict(wide_ok), text, wide_rows))
    for finding in out:
        finding["not_fitted"] = list(j.not_fitted)
    return out


def _finding(key: str, verdict: str, measured: str, seeds: list) -> dict:
    return {
        "id": key,
        "claim": CLAIMS[key],
        "paper": PAPER[key],
        "verdict": verdict,
        "measured": measured,
        "seeds": seeds,
    }


def judge_with_sensitivity(
    runs_: Sequence[JudgedRun],
    cross: dict[str, CrossSeed] | None = None,
    detector: dict | None = None,
    fit_min: float = FIT_MIN,
    cross_models: Sequence[CrossModel] = (),
) -> list[dict]:
    """`judge` at the detector's setting, each finding with "sensitivity": {contrast: verdict} at SENSITIVITY."""
    detector = dict(detector or {})
    main = judge(runs_, cross, detector, fit_min, cross_models)
    for contrast in SENSITIVITY:
        again = judge(runs_, cross, {**detector, "min_contrast": contrast}, fit_min, cross_models)
        for finding, other in zip(main, again):
            finding.setdefault("sensitivity", {})[f"{contrast:.2f}"] = other["verdict"]
    return main


def substitute(runs_: Sequence[JudgedRun], arm: Sequence[JudgedRun]) -> tuple[list[JudgedRun], list[str]]:
    """`runs_` with each run replaced by `arm`'s run of the same cell and seed; and the names replaced."""
    by_key = {(r.cell, r.seed): r for r in arm}
    return [by_key.get((r.cell, r.seed), r) for r in runs_], [r.name for r in runs_ if (r.cell, r.seed) in by_key]


def judge_arm(
    runs_: Sequence[JudgedRun],
    cross: dict[str, CrossSeed] | None,
    arm: Sequence[JudgedRun],
    arm_cross: dict[str, CrossSeed] | None = None,
    detector: dict | None = None,
    fit_min: float = FIT_MIN,
) -> dict[str, Any]:
    """The learning-rate arm (rules.md): claims (c)-(f) judged again with `arm`'s runs (another recipe) in place
    of the runs of the same cell and seed.

    The arm's runs take the others' place everywhere, as controls too. A cross-seed pair of which one run
    is replaced is dropped (it would mix recipes); the arm's own pairs take the place of those of its cells.

    Returns:
        {"claims": [{"id", "claim", "base", "arm" (verdicts), "changed", "base_measured", "arm_measured"}],
        "depends": ids of the claims whose verdict changes, "runs": per arm run {"run", "base", "arm"} with
        each side's accuracies, fit, block and first-PC row (None where the spec has no such run),
        "validation": mean validation accuracy of each side over the cells and seeds both have,
        "rests_on": "base" or "arm", the side of higher validation accuracy when a verdict depends on the
        recipe, else None}.
    """
    detector = detector or {}
    cross = cross or {}
    swapped_runs, swapped = substitute(runs_, arm)
    swapped_cross = {k: p for k, p in cross.items() if not set(p.runs) & set(swapped)} | (arm_cross or {})
    judges = {
        "base": _Judge(runs_, cross, detector, fit_min),
        "arm": _Judge(swapped_runs, swapped_cross, detector, fit_min),
    }
    verdicts = {
        "base": {f["id"]: f for f in judge(runs_, cross, detector, fit_min)},
        "arm": {f["id"]: f for f in judge(swapped_runs, swapped_cross, detector, fit_min)},
    }
    claims = [
        {
            "id": k,
            "claim": CLAIMS[k],
            "base": verdicts["base"][k]["verdict"],
            "arm": verdicts["arm"][k]["verdict"],
            "changed": verdicts["base"][k]["verdict"] != verdicts["arm"][k]["verdict"],
            "base_measured": verdicts["base"][k]["measured"],
            "arm_measured": verdicts["arm"][k]["measured"],
        }
        for k in ARM_CLAIMS
    ]
    base_by_key = {(r.cell, r.seed): r for r in runs_}
    rows = [
        {
            "run": r.name,
            "base": _arm_side(judges["base"], base_by_key.get((r.cell, r.seed)), detector, fit_min),
            "arm": _arm_side(judges["arm"], r, detector, fit_min),
        }
        for r in arm
    ]
    both = [row for row in rows if row["base"] is not None]
    validation = {side: _mean(row[side]["val_accuracy"] for row in both) for side in ("base", "arm")}
    depends = [c["id"] for c in claims if c["changed"]]
    rests_on = None
    if depends and validation["base"] == validation["base"] and validation["arm"] == validation["arm"]:
        rests_on = "arm" if validation["arm"] > validation["base"] else "base"
    return {"claims": claims, "depends": depends, "runs": rows, "validation": validation, "rests_on": rests_on}


def _arm_side(judge_: _Judge, run: JudgedRun | None, detector: dict, fit_min: float) -> dict[str, Any] | None:
    """One run of the arm's comparison: accuracies, fit, block (also for an unfitted run) and first-PC row."""
    if run is None:
        return None
    fitted = run.train_accuracy is None or run.train_accuracy >= fit_min
    block = judge_.block(run) if fitted else blocks.find_block_structure(run.cka, run.names, **detector)
    return {
        "test_accuracy": run.test_accuracy,
        "val_accuracy": float("nan") if run.val_accuracy is None else run.val_accuracy,
        "train_accuracy": run.train_accuracy,
        "fitted": fitted,
        "block": block.to_dict(),
        "first_pc": judge_.first_pc(run) if fitted and block.found else None,
    }
