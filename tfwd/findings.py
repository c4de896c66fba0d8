"""The paper's claims, judged on a set of analysed runs (tfwd.report.analyze's results).

Each finding is a dict {"id", "claim", "paper", "measured", "numbers", "verdict"},
verdict one of "reproduced", "partly reproduced" (some of the series or runs it
covers show it, some do not), "not reproduced", "not measured". The rules are
stated next to each function and repeated in the report, so a reader can check
how a verdict was reached:

(a) block structure grows with depth and with width;
(b) it appears in smaller models when the training set is smaller;
(c) inside a block the first principal component explains most of the variance;
(d) linear-probe accuracy is flat inside a block;
(e) deleting blocks inside the block structure costs little accuracy;
(f) across seeds, layers inside a block are dissimilar, layers outside alike.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

PAPER = {
    "a": "Figure 1: blocks appear as depth (ResNet-110, 164) or width (ResNet-38 4x-10x) grows.",
    "b": "Figure 2: with 1/4 and 1/16 of CIFAR-10, blocks appear in smaller models (e.g. ResNet-38 1x at 1/16).",
    "c": "Figure 3: first-PC variance fraction ~0.9 inside blocks, mostly <= 0.25 outside.",
    "d": "Figure 4: post-residual probe accuracy plateaus through the block (ResNet-26 10x).",
    "e": "Figure 5: deleting blocks inside the block structure barely changes test accuracy.",
    "f": "Figure 6: without blocks, same-depth layers match across seeds; block layers do not.",
}


def _seed0(results):
    return {k: v for k, v in results.items() if k != "_cross_seed" and v["run"].config.train.seed == 0}


def _fraction(entry) -> float:
    return float(entry["block"].fraction) if entry["block"].found else 0.0


def _label(entry) -> str:
    m = entry["run"].config.model
    return f"ResNet-{m.depth} ({m.width:g}x{'' if m.residual else ', plain'})"


def _verdict(ok: list[bool]) -> str:
    if not ok:
        return "not measured"
    return "reproduced" if all(ok) else "partly reproduced" if any(ok) else "not reproduced"


def _finding(key, claim, measured, numbers, verdict):
    return {"id": key, "claim": claim, "paper": PAPER[key], "measured": measured, "numbers": numbers, "verdict": verdict}


def capacity(results) -> dict[str, Any]:
    """(a) Within runs on the same data (seed 0, residual), the deepest of a depth series and the
    widest of a width series have a larger block fraction than the smallest model of the series."""
    groups = defaultdict(list)
    for entry in _seed0(results).values():
        c = entry["run"].config
        if c.model.residual:
            groups[(c.data.dataset, c.data.train_examples)].append(entry)
    series = []
    for (dataset, n), entries in groups.items():
        for axis, fixed in (("depth", "width"), ("width", "depth")):
            by_fixed = defaultdict(list)
            for e in entries:
                by_fixed[getattr(e["run"].config.model, fixed)].append(e)
            for members in by_fixed.values():
                if len({getattr(e["run"].config.model, axis) for e in members}) > 1:
                    members = sorted(members, key=lambda e: getattr(e["run"].config.model, axis))
                    series.append((axis, n, members))
    if not series:
        return _finding("a", "Block structure grows with depth and width", "no depth or width series in the spec", {}, "not measured")
    rows, ok = [], []
    for axis, n, members in series:
        fractions = [_fraction(e) for e in members]
        ok.append(fractions[-1] > fractions[0])
        rows.append(f"{axis} series, {n or 'all'} examples: " + ", ".join(f"{_label(e)} {f:.2f}" for e, f in zip(members, fractions)))
    verdict = _verdict(ok)
    return _finding("a", "Block structure grows with depth and width", "; ".join(rows) + " (block fraction of layers)", {"series": rows}, verdict)


def data_size(results) -> dict[str, Any]:
    """(b) For one architecture (seed 0) trained on several subset sizes, the block fraction at
    the smallest subset exceeds the fraction at the largest."""
    groups = defaultdict(list)
    for entry in _seed0(results).values():
        c = entry["run"].config
        groups[(c.model.depth, c.model.width, c.model.residual)].append(entry)
    series = [sorted(g, key=lambda e: e["run"].config.data.train_examples or 10**9) for g in groups.values() if len(g) > 1]
    if not series:
        return _finding("b", "Less training data, block structure in smaller models", "no model trained on two subset sizes", {}, "not measured")
    rows, ok = [], []
    for members in series:
        fractions = [_fraction(e) for e in members]
        ok.append(fractions[0] > fractions[-1])
        rows.append(f"{_label(members[0])}: " + ", ".join(
            f"{e['run'].config.data.train_examples or 'all'} examples {f:.2f}" for e, f in zip(members, fractions)))
    verdict = _verdict(ok)
    return _finding("b", "Less training data, block structure in smaller models", "; ".join(rows) + " (block fraction)", {"series": rows}, verdict)


def _block_runs(results, key):
    return [e for e in _seed0(results).values() if e["block"].found and key in e]


def first_pc(results) -> dict[str, Any]:
    """(c) In every seed-0 run with a block, the mean first-PC fraction of block layers is at
    least 0.5 and exceeds that of the other layers by at least 0.2."""
    entries = _block_runs(results, "pc")
    if not entries:
        return _finding("c", "Inside blocks the first PC dominates", "no run with a detected block", {}, "not measured")
    rows, ok = [], []
    for e in entries:
        names, frac = e["pc"]["names"], np.asarray(e["pc"]["fraction"])
        mask = np.array([e["block"].contains(e["cka"]["names"].index(n)) for n in names])
        inside, outside = float(frac[mask].mean()), float(frac[~mask].mean()) if (~mask).any() else float("nan")
        ok.append(inside >= 0.5 and inside - outside >= 0.2)
        rows.append(f"{_label(e)}: {inside:.2f} inside vs {outside:.2f} outside")
    return _finding("c", "Inside blocks the first PC dominates", "; ".join(rows), {"runs": rows}, _verdict(ok))


def probes_flat(results) -> dict[str, Any]:
    """(d) In every seed-0 run with a block, post-residual probe accuracy gains less from one probed
    block to the next inside the block than a quarter of its mean gain between consecutive probes
    outside it (or under 0.5 points)."""
    entries = _block_runs(results, "probes")
    if not entries:
        return _finding("d", "Probe accuracy is flat inside blocks", "no residual run with a detected block", {}, "not measured")
    rows, ok = [], []
    for e in entries:
        post = [r for r in e["probes"] if r["kind"] == "post"]
        where = [e["block"].contains(e["cka"]["names"].index(r["tap"])) for r in post]
        steps = [(b["test_accuracy"] - a["test_accuracy"], wa and wb) for a, b, wa, wb in zip(post, post[1:], where, where[1:])]
        g_in = [g for g, inside in steps if inside]
        g_out = [g for g, inside in steps if not inside]
        if not g_in or not g_out:
            rows.append(f"{_label(e)}: too few probes inside or outside the block")
            continue
        m_in, m_out = float(np.mean(g_in)), float(np.mean(g_out))
        ok.append(m_in <= max(0.25 * m_out, 0.005))
        rows.append(f"{_label(e)}: {100 * m_in:+.2f} points per block inside ({len(g_in)} steps) vs {100 * m_out:+.2f} outside ({len(g_out)})")
    return _finding("d", "Probe accuracy is flat inside blocks", "; ".join(rows), {"runs": rows}, _verdict(ok))


def _marginal_drops(e):
    """(block, accuracy lost when it is deleted after the later blocks of its stage)."""
    full = float(e["prune_blocks"]["full_accuracy"])
    by_stage = defaultdict(list)
    for r in e["prune_blocks"]["rows"]:
        by_stage[r["stage"]].append(r)
    drops = []
    for rows in by_stage.values():
        previous = full
        for r in sorted(rows, key=lambda r: r["blocks_deleted"]):
            drops.append((str(r["deleted"]).split()[-1], previous - float(r["accuracy"])))
            previous = float(r["accuracy"])
    return drops


def deletion(results) -> dict[str, Any]:
    """(e) In every seed-0 run with a block, deleting a block inside the block structure costs
    (on average) less than half the accuracy that deleting a block outside it costs."""
    entries = _block_runs(results, "prune_blocks")
    if not entries:
        return _finding("e", "Deleting blocks inside the block structure costs little", "no residual run with a detected block", {}, "not measured")
    rows, ok = [], []
    for e in entries:
        names = e["cka"]["names"]
        drops = _marginal_drops(e)
        inside = [d for b, d in drops if e["block"].contains(names.index(f"{b}_out"))]
        outside = [d for b, d in drops if not e["block"].contains(names.index(f"{b}_out"))]
        if not inside:
            rows.append(f"{_label(e)}: no deletable block inside the block structure")
            continue
        m_in, m_out = float(np.mean(inside)), float(np.mean(outside)) if outside else float("nan")
        ok.append(m_in < 0.5 * m_out if outside else m_in < 0.01)
        rows.append(f"{_label(e)}: {100 * m_in:.1f} points per deleted block inside ({len(inside)}) vs {100 * m_out:.1f} outside ({len(outside)})")
    return _finding("e", "Deleting blocks inside the block structure costs little", "; ".join(rows), {"runs": rows}, _verdict(ok))


def cross_seed(results) -> dict[str, Any]:
    """(f) For a configuration with a block (in seed 0), the mean cross-seed CKA of each layer
    with the same layer of the other seed is lower inside the block than outside by 0.1 or more."""
    pairs = results.get("_cross_seed", {})
    seed0 = {e["run"].name: e for e in _seed0(results).values()}
    if not pairs:
        return _finding("f", "Block layers are unique to each model", "no configuration trained with seeds 0 and 1", {}, "not measured")
    rows, ok = [], []
    for key, pair in pairs.items():
        e = seed0[pair["runs"][0]]
        diag = np.diag(pair["matrix"])
        if e["block"].found:
            mask = np.array([e["block"].contains(i) for i in range(len(diag))])
            m_in, m_out = float(diag[mask].mean()), float(diag[~mask].mean())
            ok.append(m_out - m_in >= 0.1)
            rows.append(f"{_label(e)}: same-layer CKA across seeds {m_in:.2f} inside the block vs {m_out:.2f} outside")
        else:
            rows.append(f"{_label(e)} (no block): same-layer CKA across seeds {diag.mean():.2f} on average")
    return _finding("f", "Block layers are unique to each model", "; ".join(rows), {"runs": rows}, _verdict(ok))


RULES = (capacity, data_size, first_pc, probes_flat, deletion, cross_seed)  # the paper's order


def judge(results: dict[str, Any]) -> list[dict[str, Any]]:
    """All six findings, in the paper's order."""
    return [rule(results) for rule in RULES]
