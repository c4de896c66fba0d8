"""Populations of independently trained models and their predictions (Figure 7, F.1-F.4).

Nguyen et al. (2021, Figure 7 and Appendix F) train many seeds of two
architectures of similar accuracy (ResNet-62 1x against ResNet-14 2x on CIFAR-10,
100 models each; ResNet-83 against ResNet-50 with a 2.8x stage 3 on ImageNet)
and ask whether they make the same mistakes:

- Per-example accuracy: the fraction of a group's models that classify a test
  example correctly. Group A against group B scatters far off the diagonal,
  while two disjoint halves of one architecture hug it (Figure 7a/b).
- Per-class accuracy of every model, and per class Welch's t-test between the
  groups (Figure 7c: wide models are better on scenes, deep ones on consumer goods).

The reference code has none of this (reference/official_code.md, section 7).
Choices made here, where the paper is silent:

- The baseline halves are two disjoint random halves of group A (the paper's
  control is "ResNet-83 - ResNet-83", the x-axis group). A half of m/2 models is
  noisier than a full group of m (binomial variance p(1 - p) / m per example), so
  comparing halves against full groups would make any two groups look different.
  Everything drawn against the baseline therefore uses h = min(m_a // 2, m_b)
  models on every side: A-half1 against a random B-subsample of size h (the
  comparison) and A-half1 against A-half2 (the control).
- Departure from the baseline: the mean over examples of the squared difference
  of the two groups' per-example accuracies. Its p-value comes from a permutation
  test on the full groups (model labels shuffled among the pooled models, group
  sizes kept; p = (1 + #{null >= observed}) / (1 + permutations)); the same
  quantity for the size-h comparison and halves is reported beside it.
- Per-class tests: Welch's t-test (scipy.stats.ttest_ind, equal_var=False) on
  the per-model class accuracies, counted at p < 0.05 and after the
  Benjamini-Hochberg correction at q = 0.05. A class where every model of both
  groups has the same accuracy has no test: t and p are NaN (null in JSON), it is
  never significant, and it does not count among the m tests of the correction.

Accuracies are fractions in [0, 1] in every array, CSV and JSON (plots use %).

Example (finished runs: `analyze`; their correctness arrays: `compare_correctness`):
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1], 100)  # 200 test examples of 2 classes
    >>> right_a = rng.random((20, 200)) < 0.7  # 20 models of A, right 70% of the time
    >>> right_b = rng.random((20, 200)) < np.where(labels == 0, 0.9, 0.7)  # B: better on class 0
    >>> out = compare_correctness(right_a, right_b, labels, permutations=100)
    >>> out["classes"]["p"] < 0.05  # Welch's t-test per class: B differs from A on class 0 only
    array([ True, False])
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from scipy import stats

from tfwd import runs
from tfwd.data import Data

# The analysis' one name: this module, bin/compare_predictions, the kind of folder it writes (the
# --out_dir a user names), whose marker (tfwd.runs.OUTPUT_MARKER) holds it, and its entry in
# tfwd.analyses. tests/names_test.py checks that they agree.
KIND = "compare_predictions"
FILE = "summary.json"
ALPHA = 0.05  # the paper's significance level (Figure 7c)
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --- loading ----------------------------------------------------------------------------------


def find_runs(pattern: str) -> list[runs.Run]:
    """The finished run directories matching a glob pattern, sorted by path.

    Matches that are not run directories (no config.json) and unfinished runs
    (no results.json) are skipped with a warning.

    Args:
        pattern: a glob pattern of run directories, e.g. "runs/cifar10-resnet62-w1-s*".

    Raises:
        ValueError: if no finished run matches.
    """
    paths = sorted(p for p in glob.glob(pattern) if os.path.isfile(os.path.join(p, runs.CONFIG)))
    if not paths:
        raise ValueError(f"No run directory (a folder with {runs.CONFIG}) matches the pattern {pattern!r}.")
    opened = [runs.Run(p) for p in paths]
    unfinished = [r.name for r in opened if not r.finished]
    if unfinished:
        logging.warning("Skipping %d unfinished runs matching %r: %s", len(unfinished), pattern, ", ".join(unfinished))
    finished = [r for r in opened if r.finished]
    if not finished:
        raise ValueError(f"None of the {len(paths)} runs matching {pattern!r} has finished (no {runs.RESULTS}).")
    return finished


def load_correctness(groups: Sequence[Sequence[runs.Run]]) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Which test examples each model classifies correctly, checking that all runs share them.

    Args:
        groups: lists of finished runs (tfwd.runs.Run).

    Returns:
        ([(M_g, N) bool per group], labels (N,) int32, number of classes C).

    Raises:
        ValueError: naming the first run whose dataset, labels or predictions'
            shape differ from the first run's.
    """
    first, reference, correct = None, None, []
    for group in groups:
        rows = []
        for run in group:
            pred = run.predictions()
            probs, labels = np.asarray(pred["probs"]), np.asarray(pred["labels"])
            if probs.ndim != 2 or labels.shape != probs.shape[:1]:
                raise ValueError(
                    f"Run {run.path}: probs must be (N, C) and labels (N,). Received: {probs.shape}, {labels.shape}"
                )
            if first is None:
                first, reference = run, (run.config.data.dataset, labels, probs.shape[1])
            elif run.config.data.dataset != reference[0]:
                raise ValueError(
                    f"Run {run.path} is on {run.config.data.dataset!r}, but {first.path} is on {reference[0]!r}."
                )
            elif labels.shape != reference[1].shape or not np.array_equal(labels, reference[1]):
                raise ValueError(
                    f"Run {run.path} has other test labels than {first.path}: its predictions are on other examples."
                )
            elif probs.shape[1] != reference[2]:
                raise ValueError(f"Run {run.path} predicts {probs.shape[1]} classes, {first.path} {reference[2]}.")
            rows.append(np.argmax(probs, axis=1) == labels)
        correct.append(np.stack(rows))
    return correct, reference[1].astype(np.int32), reference[2]


def class_names(data_config, num_classes: int) -> list[str]:
    """Class names of a run's dataset, without needing the examples on disk.

    Tries the prepared dataset (tfwd.data.Data), then TFDS's builder info, then
    the built-in CIFAR-10 names, else "class_<i>".
    """
    names: list[str] = []
    try:  # never fetch a dataset for its class names
        names = list(Data(dataclasses.replace(data_config, download=False)).class_names)
    except Exception:  # noqa: BLE001 - names are a nicety; any failure falls back
        try:
            names = list(tfds.builder(data_config.dataset).info.features["label"].names)
        except Exception:  # noqa: BLE001
            names = []
    # Unprepared TFDS builders name classes "0", "1", ... (names come with the data).
    if len(names) != num_classes or all(n.isdigit() for n in names):
        names = list(CIFAR10_NAMES) if data_config.dataset == "cifar10" and num_classes == 10 else []
    return names or [f"class_{i}" for i in range(num_classes)]


# --- statistics -------------------------------------------------------------------------------


def per_class_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Each model's accuracy on each class.

    Args:
        correct: (M, N) bool, model m right on example n.
        labels: (N,) int labels in [0, num_classes).
        num_classes: C.

    Returns:
        (M, C) float64; NaN for a class without test examples.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.stack(
        [np.bincount(labels, weights=row, minlength=num_classes) for row in np.asarray(correct, np.float64)]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts


def welch(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Welch's t-test of b against a along axis 0 (scipy.stats.ttest_ind, equal_var=False).

    Args:
        a: (M_a, ...) samples of group A (M_a >= 2).
        b: (M_b, ...) samples of group B (M_b >= 2).

    Returns:
        {"t", "df", "p"} arrays of the trailing shape: t > 0 when B's mean is
        higher; df is the Welch-Satterthwaite degrees of freedom; two-sided p.
        NaN where both samples are constant (no test).
    """
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on constant samples
        res = stats.ttest_ind(b, a, axis=0, equal_var=False)
    return {k: np.asarray(v, np.float64) for k, v in (("t", res.statistic), ("df", res.df), ("p", res.pvalue))}


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg (1995) adjusted p-values; reject where p_bh < q controls the FDR at q.

    p_bh of the i-th smallest of m p-values is min over j >= i of p_(j) * m / j,
    capped at 1. NaN p-values stay NaN and are not counted in m.

    Args:
        p: p-values, any shape.

    Returns:
        Adjusted p-values, float64, same shape.

    Example:
        >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.2]))
        array([0.04      , 0.05333333, 0.05333333, 0.2       ])
    """
    p = np.asarray(p, np.float64)
    flat, out = p.ravel(), np.full(p.size, np.nan)
    valid = np.flatnonzero(np.isfinite(flat))
    order = valid[np.argsort(flat[valid], kind="stable")]
    m = len(order)
    scaled = flat[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out.reshape(p.shape)


def _group_sums(masks: np.ndarray, pooled: np.ndarray, total: np.ndarray, m_a: int) -> np.ndarray:
    """Mean squared per-example accuracy difference for each row of 0/1 group-A masks."""
    sum_a = masks @ pooled
    diff = sum_a / m_a - (total - sum_a) / (len(pooled) - m_a)
    return np.mean(diff**2, axis=-1)


def permutation_test(
    correct_a: np.ndarray, correct_b: np.ndarray, permutations: int = 1000, seed: int | np.random.SeedSequence = 0
) -> dict[str, float]:
    """Do the groups' per-example accuracies differ more than chance? (exchangeability of models).

    Statistic: mean_n (acc_A[n] - acc_B[n])^2 over the N test examples. Null:
    the group labels of the pooled models are shuffled (group sizes kept).

    Args:
        correct_a: (M_a, N) bool. correct_b: (M_b, N) bool.
        permutations: number of shuffles P.
        seed: seed of the shuffles.

    Returns:
        {"msd": observed statistic, "null_mean": mean under the shuffles,
        "p": (1 + #{null >= observed}) / (1 + P)}.
    """
    if permutations < 1:
        raise ValueError(f"`permutations` must be >= 1. Received: permutations={permutations!r}")
    pooled = np.concatenate([correct_a, correct_b]).astype(np.float64)
    m, m_a, total = len(pooled), len(correct_a), pooled.sum(0)
    identity = np.zeros((1, m))
    identity[0, :m_a] = 1.0
    observed = _group_sums(identity, pooled, total, m_a)[0]  # same arithmetic as the null draws
    rng, null = np.random.default_rng(seed), []
    for start in range(0, permutations, 64):  # chunks bound memory at 64 x N
        k = min(64, permutations - start)
        chosen = rng.permuted(np.tile(np.arange(m), (k, 1)), axis=1)[:, :m_a]
        masks = np.zeros((k, m))
        masks[np.arange(k)[:, None], chosen] = 1.0
        null.append(_group_sums(masks, pooled, total, m_a))
    null = np.concatenate(null)
    p = (1 + np.count_nonzero(null >= observed * (1 - 1e-12))) / (1 + permutations)
    return {"msd": float(observed), "null_mean": float(null.mean()), "p": float(p)}


def split_halves(m_a: int, m_b: int, seed: int | np.random.SeedSequence = 0) -> dict[str, np.ndarray]:
    """Indices of two disjoint halves of group A and a same-sized subsample of group B.

    Returns:
        {"half1", "half2"} into A and {"sub_b"} into B, each of h = min(m_a // 2, m_b) indices.
    """
    h = min(m_a // 2, m_b)
    if h < 1:
        raise ValueError(f"Halves need >= 2 models in group A and >= 1 in group B. Received: {m_a} and {m_b}.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(m_a)
    return {"half1": np.sort(order[:h]), "half2": np.sort(order[h : 2 * h]), "sub_b": np.sort(rng.permutation(m_b)[:h])}


# --- the comparison ---------------------------------------------------------------------------


def compare_correctness(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    permutations: int = 1000,
    top_k: int = 5,
) -> dict[str, Any]:
    """Per-example and per-class comparison of two populations of models (compute only).

    Args:
        correct_a: (M_a, N) bool, model m of group A right on test example n (M_a >= 2).
        correct_b: (M_b, N) bool, the same for group B (M_b >= 2).
        labels: (N,) int labels.
        num_classes: C (default: max label + 1).
        names: C class names (default "class_<i>").
        seed: seeds the halves and the permutation test (independent streams).
        permutations: shuffles of the permutation test.
        top_k: classes listed as favoured by each group.

    Returns:
        {"summary": JSON-ready dict (see `write_comparison`), "examples": {"labels",
        "acc_a", "acc_b" (full groups), "acc_a_half1", "acc_a_half2", "acc_b_sub"
        (size h each)}: (N,) arrays, "classes": {"acc_a" (M_a, C), "acc_b" (M_b, C),
        "mean_a", "mean_b", "diff" (B - A), "t", "df", "p", "p_bh", "diff_sub"
        (B-sub - A-half1), "control_diff" (A-half2 - A-half1), "examples"}: (C,) arrays}.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.arange(500) % 10
        >>> out = compare_correctness(rng.random((30, 500)) < 0.9, rng.random((30, 500)) < 0.9, labels)
        >>> out["examples"]["acc_a"].shape, out["classes"]["p"].shape  # same accuracy: few classes differ
        ((500,), (10,))
    """
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    labels = np.asarray(labels).astype(np.int64)
    if correct_a.ndim != 2 or correct_b.ndim != 2 or not correct_a.shape[1] == correct_b.shape[1] == len(labels):
        raise ValueError(
            f"`correct_a` and `correct_b` must be (M, N) with N = len(labels) = {len(labels)}. "
            f"Received: {correct_a.shape}, {correct_b.shape}"
        )
    if len(correct_a) < 2 or len(correct_b) < 2:
        raise ValueError(
            f"Each group needs >= 2 models for a t-test. Received: {len(correct_a)} and {len(correct_b)} models."
        )
    num_classes = int(num_classes or labels.max() + 1)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"`labels` must lie in [0, {num_classes}). Received: [{labels.min()}, {labels.max()}]")
    names = list(names) if names is not None else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"`names` must hold {num_classes} class names. Received: {len(names)}")
    halves_seed, permutation_seed = np.random.SeedSequence(seed).spawn(2)
    idx = split_halves(len(correct_a), len(correct_b), halves_seed)
    parts = {"half1": correct_a[idx["half1"]], "half2": correct_a[idx["half2"]], "sub": correct_b[idx["sub_b"]]}
    examples = {"labels": labels.astype(np.int32), "acc_a": correct_a.mean(0), "acc_b": correct_b.mean(0)}
    examples.update(
        acc_a_half1=parts["half1"].mean(0), acc_a_half2=parts["half2"].mean(0), acc_b_sub=parts["sub"].mean(0)
    )
    departure = permutation_test(correct_a, correct_b, permutations, permutation_seed)
    departure.update(
        h=len(idx["half1"]),
        permutations=permutations,
        msd_subsampled=float(np.mean((examples["acc_b_sub"] - examples["acc_a_half1"]) ** 2)),
        msd_halves=float(np.mean((examples["acc_a_half2"] - examples["acc_a_half1"]) ** 2)),
    )
    departure["ratio"] = departure["msd_subsampled"] / departure["msd_halves"] if departure["msd_halves"] > 0 else None
    classes = _class_statistics(correct_a, correct_b, labels, num_classes, parts)
    summary = _summary(correct_a, correct_b, classes, names, departure, top_k)
    summary.update(seed=seed, top_k=top_k, num_examples=len(labels), num_classes=num_classes)
    return {"summary": summary, "examples": examples, "classes": classes}


def _class_statistics(correct_a, correct_b, labels, num_classes, parts) -> dict[str, np.ndarray]:
    def mean(correct):
        return per_class_accuracy(correct, labels, num_classes).mean(0)

    acc_a, acc_b = (
        per_class_accuracy(correct_a, labels, num_classes),
        per_class_accuracy(correct_b, labels, num_classes),
    )
    test = welch(acc_a, acc_b)
    return {
        **dict(
            acc_a=acc_a, acc_b=acc_b, mean_a=acc_a.mean(0), mean_b=acc_b.mean(0), diff=acc_b.mean(0) - acc_a.mean(0)
        ),
        **test,
        "p_bh": benjamini_hochberg(test["p"]),
        "diff_sub": mean(parts["sub"]) - mean(parts["half1"]),  # noise-matched (h models each) for Figure 7c
        "control_diff": mean(parts["half2"]) - mean(parts["half1"]),
        "examples": np.bincount(labels, minlength=num_classes),
    }


def _num(x) -> float | None:
    """A strict-JSON number: NaN and infinities (no test, or zero variance) become None."""
    x = float(x)
    return x if np.isfinite(x) else None


def _headline(summary: dict[str, Any], num_classes: int) -> str:
    """One line in the paper's style: "78.00 ± 0.01 vs 77.97 ± 0.01, t(99) = 2.0, p = 0.047"."""

    def fmt(x, spec):
        return "n/a" if x is None else format(x, spec)

    o, d = summary["overall"], summary["departure"]
    return (
        f"A {100 * o['mean_a']:.2f} ± {100 * o['sem_a']:.2f}% vs B {100 * o['mean_b']:.2f} ± {100 * o['sem_b']:.2f}% "
        f"(Welch t({fmt(o['df'], '.1f')}) = {fmt(o['t'], '.2f')}, p = {fmt(o['p'], '.3g')}); "
        f"{summary['classes_significant_p05']}/{num_classes} classes differ at p < {ALPHA} "
        f"({summary['classes_significant_bh05']} after BH); per-example departure {fmt(d['ratio'], '.2f')}x "
        f"the halves baseline (permutation p = {d['p']:.3g})"
    )


def _summary(correct_a, correct_b, classes, names, departure, top_k) -> dict[str, Any]:
    model_a, model_b = correct_a.mean(1), correct_b.mean(1)
    test = welch(model_a, model_b)
    overall = {"mean_a": float(model_a.mean()), "sem_a": float(stats.sem(model_a))}
    overall.update(mean_b=float(model_b.mean()), sem_b=float(stats.sem(model_b)), n_a=len(model_a), n_b=len(model_b))
    overall.update({k: _num(v) for k, v in test.items()})  # t > 0: B more accurate; Welch-Satterthwaite df
    fields = ("mean_a", "mean_b", "diff", "t", "df", "p", "p_bh", "diff_sub", "control_diff")
    per_class = [
        {
            "class": c,
            "name": names[c],
            "examples": int(classes["examples"][c]),
            **{f: _num(classes[f][c]) for f in fields},
        }
        for c in range(len(names))
    ]
    diff = np.nan_to_num(classes["diff"], nan=0.0)
    order = np.argsort(-diff, kind="stable")
    top_b = [per_class[c] for c in order[:top_k] if diff[c] > 0]
    top_a = [per_class[c] for c in order[::-1][:top_k] if diff[c] < 0]
    p, p_bh = np.nan_to_num(classes["p"], nan=1.0), np.nan_to_num(classes["p_bh"], nan=1.0)
    summary = {
        "alpha": ALPHA,
        "classes_significant_p05": int(np.count_nonzero(p < ALPHA)),
        "classes_significant_bh05": int(np.count_nonzero(p_bh < ALPHA)),
        "overall": overall,
        "departure": departure,
        "top_a": top_a,
        "top_b": top_b,
        "per_class": per_class,
    }
    summary["headline"] = _headline(summary, len(names))
    return summary


def _group_label(group: Sequence[runs.Run], fallback: str) -> str:
    names = {r.config.model.name for r in group}
    return names.pop() if len(names) == 1 else fallback


def compare_groups(
    runs_a: Sequence[runs.Run | str],
    runs_b: Sequence[runs.Run | str],
    seed: int = 0,
    permutations: int = 1000,
    top_k: int = 5,
) -> dict[str, Any]:
    """`compare_correctness` of two groups of finished runs, with their names and class names.

    Args:
        runs_a, runs_b: finished runs (tfwd.runs.Run or run directories), >= 2 each,
            all with predictions on the same test examples.
        seed, permutations, top_k: as `compare_correctness`.

    Returns:
        As `compare_correctness`; the summary also holds "dataset" and "groups":
        {"a": {"label", "runs"}, "b": ...} (label: the shared model name, e.g. "resnet62-w1").

    Raises:
        ValueError: for runs on other examples (naming the run), too few runs, or a
            run in both groups.
    """
    groups = [[r if isinstance(r, runs.Run) else runs.Run(r) for r in g] for g in (runs_a, runs_b)]
    if not all(groups):
        raise ValueError(f"Both groups need runs. Received: {len(groups[0])} and {len(groups[1])} runs.")
    shared = sorted({os.path.realpath(r.path) for r in groups[0]} & {os.path.realpath(r.path) for r in groups[1]})
    if shared:
        raise ValueError(
            f"Groups A and B share {len(shared)} runs ({', '.join(os.path.basename(p) for p in shared[:3])}"
            f"{', ...' if len(shared) > 3 else ''}): a population compared with itself shows no difference. "
            "Give patterns that match disjoint runs."
        )
    (correct_a, correct_b), labels, num_classes = load_correctness(groups)
    data_config = groups[0][0].config.data
    result = compare_correctness(
        correct_a, correct_b, labels, num_classes, class_names(data_config, num_classes), seed, permutations, top_k
    )
    result["summary"]["dataset"] = data_config.dataset
    result["summary"]["groups"] = {
        key: {"label": _group_label(group, f"group {key.upper()}"), "runs": [r.name for r in group]}
        for key, group in zip("ab", groups)
    }
    return result


def write_comparison(result: dict[str, Any], output: runs.Output) -> str:
    """Writes a comparison into its output folder, as a whole or not at all (`tfwd.runs.Output`).

    Files: summary.json (the summary: "overall" {"mean_a", "sem_a", "mean_b",
    "sem_b", "t", "df", "p", "n_a", "n_b"}, "classes_significant_p05",
    "classes_significant_bh05", "departure", "top_a", "top_b", "per_class" [{"class",
    "name", "examples", "mean_a", "mean_b", "diff", "t", "df", "p", "p_bh",
    "diff_sub", "control_diff"}], ...), per_class.csv (those rows), per_example.npz
    (the "examples" arrays), per_example.png (Figure 7a/b: A-half1 against B-sub and
    against A-half2) and per_class.png (Figure 7c: B-sub - A-half1 and the control
    A-half2 - A-half1 against group A's class accuracy; all sides h models, so the
    two clouds carry the same binomial noise).

    Returns:
        The output folder.
    """
    from tfwd.plots import compare_predictions as plots  # matplotlib only when figures are drawn
    from tfwd.plots.common import save_figure

    summary, ex, cl = result["summary"], result["examples"], result["classes"]
    groups = summary.get("groups", {})
    label_a, label_b = (groups.get(k, {}).get("label", f"group {k.upper()}") for k in "ab")
    h = summary["departure"]["h"]
    with output.writing(f"Comparison of {label_a} and {label_b}") as tmp:
        runs.write_json(os.path.join(tmp, FILE), summary)
        runs.write_csv(os.path.join(tmp, "per_class.csv"), summary["per_class"])
        runs.write_npz(os.path.join(tmp, "per_example.npz"), **ex)
        ax = plots.per_example_scatter(
            ex["acc_a_half1"],
            ex["acc_b_sub"],
            ex["acc_a_half2"],
            names=(label_a, label_b),
            models=h,
            seed=summary.get("seed", 0),
        )
        save_figure(ax.figure, os.path.join(tmp, "per_example.png"))
        names = [row["name"] for row in summary["per_class"]]
        top = [row["class"] for row in summary["top_a"] + summary["top_b"]]
        ax = plots.per_class_differences(
            cl["mean_a"],
            cl["diff_sub"],
            cl["control_diff"],
            names=names,
            groups=(label_a, label_b),
            models=h,
            annotate=top,
        )
        save_figure(ax.figure, os.path.join(tmp, "per_class.png"))
    return output.path


@dataclasses.dataclass(frozen=True, eq=False)
class ComparisonResult:
    """What `load` reads from an `analyze` output folder.

    Attributes:
        summary: summary.json (see `write_comparison`): "headline", "overall", "departure",
            "classes_significant_p05", "classes_significant_bh05", "top_a", "top_b", "per_class",
            "groups", "dataset", "measured", ...; accuracies in [0, 1], NaN as None.
        examples: per_example.npz: "labels" (N,) int32 and the per-example accuracies "acc_a",
            "acc_b" (full groups), "acc_a_half1", "acc_a_half2", "acc_b_sub" (h models each), (N,) float64.
    """

    summary: dict[str, Any]
    examples: dict[str, np.ndarray]

    @property
    def headline(self) -> str:
        """The comparison in one line, in the paper's style."""
        return self.summary["headline"]


def load(folder: str) -> ComparisonResult:
    """The `ComparisonResult` of an `analyze` output folder.

    Raises:
        tfwd.runs.RunError: if the folder measured a run that was retrained since.
    """
    runs.check_measured(folder)
    with open(os.path.join(folder, FILE)) as f:
        summary = json.load(f)
    with np.load(os.path.join(folder, "per_example.npz")) as f:
        examples = {key: f[key] for key in f.files}
    return ComparisonResult(summary, examples)


@runs.reading_runs()  # the runs stay locked for reading until the output is written
def analyze(group_a: str, group_b: str, out_dir: str, seed: int = 0, permutations: int = 1000, top_k: int = 5) -> str:
    """Compares the finished runs matching two glob patterns and writes the results (see `write_comparison`;
    `load` reads them back).

    Example (needs two populations of finished runs, e.g. from bin/sweep --spec=data/sweeps/figure7.json;
    tests/compare_predictions_test.py runs it on small ones)::

        analyze("runs/cifar10-resnet62-w1-s*", "runs/cifar10-resnet14-w2-s*", "out/62_vs_14")  # -> 'out/62_vs_14'
    """
    output = runs.Output(KIND, out_dir)
    result = compare_groups(find_runs(group_a), find_runs(group_b), seed, permutations, top_k)
    result["summary"]["groups"]["a"]["pattern"] = group_a
    result["summary"]["groups"]["b"]["pattern"] = group_b
    result["summary"]["measured"] = runs.measured()  # the digest of each run's model, results and settings
    logging.info("%s", result["summary"]["headline"])
    return write_comparison(result, output)
