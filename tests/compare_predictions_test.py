"""tfwd.compare_predictions: per-example and per-class comparisons of model populations on synthetic runs.

Synthetic populations draw each model's correctness on each test example from known
probabilities, so planted differences (and their absence) are known exactly.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from tfwd import compare_predictions, runs
from tfwd.data import DataConfig
from tfwd.plots import compare_predictions as population_plots


def simulate(p_a, p_b, models_a=30, models_b=30, seed=0):
    """Correctness (M, N) of two groups whose models are right on example n with probability p_g[n]."""
    rng = np.random.default_rng(seed)
    return rng.random((models_a, len(p_a))) < p_a, rng.random((models_b, len(p_b))) < p_b


def class_population(class_acc_a, class_acc_b, per_class, models=30, seed=0):
    labels = np.repeat(np.arange(len(class_acc_a)), per_class)
    a, b = simulate(np.asarray(class_acc_a)[labels], np.asarray(class_acc_b)[labels], models, models, seed)
    return a, b, labels


def example_population(num_classes=10, per_class=500, models_a=30, models_b=30, shuffle_b=False, seed=0):
    """Examples of varied difficulty; with shuffle_b, B's difficulties are A's permuted within each class
    (per-class accuracy unchanged in expectation, per-example accuracy different)."""
    rng = np.random.default_rng(seed + 100)
    labels = np.repeat(np.arange(num_classes), per_class)
    p_a = rng.beta(3.0, 0.6, size=len(labels))
    p_b = p_a.copy()
    if shuffle_b:
        for c in range(num_classes):
            idx = np.flatnonzero(labels == c)
            p_b[idx] = p_a[rng.permutation(idx)]
    a, b = simulate(p_a, p_b, models_a, models_b, seed)
    return a, b, labels


# --- statistics ---------------------------------------------------------------------------------


def test_planted_class_differences_are_found():
    acc_a = np.full(10, 0.7)
    acc_b = acc_a.copy()
    planted = [2, 5, 7]
    acc_b[planted] += 0.10  # +10 points for group B, 30 models per group, 100 examples per class
    a, b, labels = class_population(acc_a, acc_b, per_class=100)
    out = compare_predictions.compare_correctness(a, b, labels, seed=0, permutations=50, top_k=3)
    classes, summary = out["classes"], out["summary"]
    assert set(np.flatnonzero(classes["p"] < 0.05)) == set(planted)
    assert set(np.flatnonzero(classes["p_bh"] < 0.05)) == set(planted)
    assert summary["classes_significant_p05"] == summary["classes_significant_bh05"] == 3
    assert sorted(row["class"] for row in summary["top_b"]) == planted
    np.testing.assert_allclose(classes["diff"][planted], 0.10, atol=0.03)  # 3 SE of a 30-model mean
    assert all(row["diff"] < 0 for row in summary["top_a"])


def test_false_positive_rate_near_alpha_without_planted_differences():
    rng = np.random.default_rng(1)
    acc = rng.uniform(0.6, 0.95, size=1000)  # 1000 classes, the same in both groups
    a, b, labels = class_population(acc, acc, per_class=20, seed=1)
    summary = compare_predictions.compare_correctness(a, b, labels, seed=0, permutations=20)["summary"]
    rate = summary["classes_significant_p05"] / 1000
    assert abs(rate - 0.05) <= 3.5 * np.sqrt(0.05 * 0.95 / 1000), rate  # binomial tolerance, 3.5 SD
    assert summary["classes_significant_bh05"] == 0  # BH under the global null: FWER <= 0.05


def test_statistics_equal_scipy():
    a, b, labels = class_population(
        np.linspace(0.5, 0.9, 5), np.linspace(0.55, 0.85, 5), per_class=40, models=12, seed=3
    )
    b = b[:9]  # unequal group sizes
    out = compare_predictions.compare_correctness(a, b, labels, seed=0, permutations=20)
    for c in range(5):
        # per-model class accuracies, computed independently of the library
        xa = np.array([row[labels == c].mean() for row in a])
        xb = np.array([row[labels == c].mean() for row in b])
        ref = stats.ttest_ind(xb, xa, equal_var=False)
        va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
        df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))  # Welch-Satterthwaite
        assert out["classes"]["t"][c] == pytest.approx(ref.statistic, rel=1e-12)
        assert out["classes"]["p"][c] == pytest.approx(ref.pvalue, rel=1e-12)
        assert out["classes"]["df"][c] == pytest.approx(df, rel=1e-12)
        assert out["classes"]["diff"][c] == pytest.approx(xb.mean() - xa.mean(), abs=1e-15)
    overall = out["summary"]["overall"]
    ma, mb = a.mean(1), b.mean(1)
    ref = stats.ttest_ind(mb, ma, equal_var=False)
    assert (overall["n_a"], overall["n_b"]) == (12, 9)
    assert overall["mean_a"] == pytest.approx(ma.mean(), abs=1e-15)
    assert overall["sem_a"] == pytest.approx(stats.sem(ma), rel=1e-12)
    assert overall["sem_b"] == pytest.approx(stats.sem(mb), rel=1e-12)
    assert (overall["t"], overall["p"], overall["df"]) == pytest.approx((ref.statistic, ref.pvalue, ref.df), rel=1e-12)


def test_constant_class_has_no_test_and_is_not_counted():
    a, b, labels = class_population([1.0, 0.6, 0.6, 0.6], [1.0, 0.6, 0.6, 0.9], per_class=50, seed=4)
    out = compare_predictions.compare_correctness(a, b, labels, seed=0, permutations=20)
    assert np.isnan(out["classes"]["t"][0]) and np.isnan(out["classes"]["p_bh"][0])
    assert out["summary"]["per_class"][0]["p"] is None  # JSON null, not NaN
    # BH over the 3 testable classes only
    np.testing.assert_allclose(
        out["classes"]["p_bh"][1:], stats.false_discovery_control(out["classes"]["p"][1:]), rtol=1e-12
    )
    assert out["summary"]["classes_significant_p05"] == 1


@pytest.mark.parametrize(
    "p, expected",
    [
        pytest.param([0.01, 0.04, 0.03, 0.005, 0.5], [0.025, 0.05, 0.05, 0.025, 0.5], id="hand_computed"),
        # step-up: 0.04 * 2/1 = 0.08 is lowered to the larger p's 0.045 * 2/2
        pytest.param([0.04, 0.045], [0.045, 0.045], id="step_up"),
        pytest.param([0.3, 0.9, np.nan], [0.6, 0.9, np.nan], id="nan_not_counted"),
        pytest.param([0.02, 0.02, 0.02], [0.02, 0.02, 0.02], id="ties"),
        pytest.param([0.8], [0.8], id="single"),
    ],
)
def test_benjamini_hochberg_by_hand(p, expected):
    np.testing.assert_allclose(compare_predictions.benjamini_hochberg(np.array(p)), expected, rtol=1e-12)


def test_benjamini_hochberg_equals_scipy():
    p = np.random.default_rng(5).uniform(size=(7, 40)) ** 3
    np.testing.assert_allclose(
        compare_predictions.benjamini_hochberg(p), stats.false_discovery_control(p.ravel()).reshape(p.shape), rtol=1e-12
    )


# --- per-example departure from the halves baseline -------------------------------------------


def test_split_halves_are_disjoint_and_sized_to_the_smaller_side():
    idx = compare_predictions.split_halves(11, 4, seed=7)
    assert len(idx["half1"]) == len(idx["half2"]) == len(idx["sub_b"]) == 4
    assert not set(idx["half1"]) & set(idx["half2"]) and max(idx["sub_b"]) < 4
    again = compare_predictions.split_halves(11, 4, seed=7)
    assert all(np.array_equal(idx[k], again[k]) for k in idx)
    assert len(compare_predictions.split_halves(100, 100)["half1"]) == 50
    with pytest.raises(ValueError, match=">= 2 models in group A"):
        compare_predictions.split_halves(1, 5)


def test_same_architecture_is_not_flagged():
    a, b, labels = example_population(models_a=30, models_b=30)
    departure = compare_predictions.compare_correctness(a, b, labels, seed=0, permutations=200)["summary"]["departure"]
    assert departure["p"] > 0.05
    assert departure["ratio"] == pytest.approx(1.0, abs=0.1)


def test_planted_per_example_differences_are_flagged():
    a, b, labels = example_population(shuffle_b=True)
    out = compare_predictions.compare_correctness(a, b, labels, seed=0, permutations=200)
    departure = out["summary"]["departure"]
    assert departure["p"] == pytest.approx(1 / 201)  # no shuffle reaches the observed value
    assert departure["ratio"] > 3
    assert out["summary"]["overall"]["p"] > 0.01  # same overall accuracy: only the examples differ


def test_subsampling_matches_the_noise_of_the_halves():
    """Halves of 20 against a full group of 100 would look different; h against h does not."""
    a, b, labels = example_population(models_a=40, models_b=100, per_class=1000, seed=2)
    out = compare_predictions.compare_correctness(a, b, labels, seed=0, permutations=20)
    ex, departure = out["examples"], out["summary"]["departure"]
    assert departure["h"] == 20
    assert departure["ratio"] == pytest.approx(1.0, abs=0.05)
    naive = np.mean((ex["acc_b"] - ex["acc_a_half1"]) ** 2) / departure["msd_halves"]
    assert naive == pytest.approx(0.6, abs=0.05)  # (1/20 + 1/100) / (2/20)


# --- run directories ------------------------------------------------------------------------


def write_run(root, depth, width, seed, correct, labels, num_classes=10, dataset="cifar10", finished=True):
    config = runs.RunConfig(runs.ModelConfig(depth, width), DataConfig(dataset=dataset), runs.TrainConfig(seed=seed))
    path = os.path.join(root, config.name)
    os.makedirs(path)
    runs.write_json(os.path.join(path, runs.CONFIG), config.to_dict())
    wrong = (labels + 1 + (np.arange(len(labels)) % (num_classes - 1))) % num_classes
    predicted = np.where(correct, labels, wrong)
    probs = np.full((len(labels), num_classes), 0.1 / (num_classes - 1), np.float32)
    probs[np.arange(len(labels)), predicted] = 0.9
    runs.write_npz(os.path.join(path, runs.PREDICTIONS), probs=probs, labels=labels.astype(np.int32))
    if finished:
        runs.write_json(os.path.join(path, runs.RESULTS), {"test_accuracy": float(np.mean(correct))})
    return path


@pytest.fixture
def population_dirs(tmp_path):
    """4 ResNet-62 (1x) runs against 5 ResNet-14 (2x) runs, class 3 planted +30 points for B."""
    acc_b = np.full(10, 0.6)
    acc_b[3] = 0.9
    a, b, labels = class_population(np.full(10, 0.6), acc_b, per_class=30, models=5, seed=8)
    root = tmp_path / "runs"
    for s, row in enumerate(a[:4]):
        write_run(root, 62, 1, s, row, labels)
    for s, row in enumerate(b):
        write_run(root, 14, 2, s, row, labels)
    return root, a[:4], b, labels


def test_compare_groups_reads_runs(population_dirs):
    root, a, b, labels = population_dirs
    out = compare_predictions.compare_groups(
        compare_predictions.find_runs(str(root / "*resnet62*")),
        compare_predictions.find_runs(str(root / "*resnet14*")),
        permutations=50,
    )
    summary = out["summary"]
    assert summary["groups"]["a"] == {"label": "resnet62-w1", "runs": [f"cifar10-resnet62-w1-s{s}" for s in range(4)]}
    assert summary["groups"]["b"]["label"] == "resnet14-w2" and summary["dataset"] == "cifar10"
    np.testing.assert_array_equal(out["examples"]["acc_a"], a.mean(0))
    assert [row["name"] for row in summary["per_class"]] == list(compare_predictions.CIFAR10_NAMES)
    assert summary["top_b"][0]["name"] == "cat"  # class 3


def test_analyze_writes_what_load_reads(population_dirs, tmp_path):
    root, a, b, labels = population_dirs
    out = compare_predictions.analyze(
        str(root / "*resnet62*"), str(root / "*resnet14*"), str(tmp_path / "cmp"), permutations=50
    )
    assert out == str(tmp_path / "cmp")
    loaded = compare_predictions.load(out)
    assert isinstance(loaded, compare_predictions.ComparisonResult)
    assert loaded.summary == json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert loaded.headline == loaded.summary["headline"] and loaded.summary["groups"]["a"]["label"] == "resnet62-w1"
    assert loaded.summary["overall"]["mean_b"] == pytest.approx(b.mean(), abs=1e-12)
    np.testing.assert_array_equal(loaded.examples["acc_a"], a.mean(0))
    np.testing.assert_array_equal(loaded.examples["labels"], labels)
    assert len(loaded.summary["measured"]) == len(a) + len(b)  # every run's fingerprint


def test_unfinished_runs_are_skipped_and_empty_globs_are_errors(population_dirs, tmp_path):
    root, _, _, labels = population_dirs
    write_run(root, 62, 1, 9, np.ones(len(labels), bool), labels, finished=False)
    assert len(compare_predictions.find_runs(str(root / "*resnet62*"))) == 4
    with pytest.raises(ValueError, match=r"No run directory .* matches the pattern '.*nothing\*'"):
        compare_predictions.find_runs(str(tmp_path / "nothing*"))
    with pytest.raises(ValueError, match="None of the 1 runs matching .* has finished"):
        compare_predictions.find_runs(str(root / "*resnet62-w1-s9"))


@pytest.mark.parametrize("change", ["labels", "order", "dataset"])
def test_runs_on_other_examples_are_named(population_dirs, change):
    root, a, _, labels = population_dirs
    other = labels.copy()
    if change == "labels":
        other[0] = (other[0] + 1) % 10
    elif change == "order":
        other = other[::-1].copy()
    bad = write_run(root, 14, 2, 7, a[0], other, dataset="cifar100" if change == "dataset" else "cifar10")
    group_a = compare_predictions.find_runs(str(root / "*resnet62*"))
    with pytest.raises(ValueError, match=f"Run {bad} "):
        group_b = compare_predictions.find_runs(str(root / "*resnet14*"))
        compare_predictions.compare_groups(group_a, group_b, permutations=10)


def test_plots_draw_both_clouds():
    rng = np.random.default_rng(0)
    x, y, c = rng.random((3, 50))
    ax = population_plots.per_example_scatter(x, y, c, names=("A", "B"), models=10)
    control, comparison = ax.collections
    assert control.get_offsets().shape == comparison.get_offsets().shape == (50, 2)
    np.testing.assert_allclose(comparison.get_offsets()[:, 0], 100 * x, atol=100 * 0.3 / 10)  # jitter <= 0.3 steps
    ax = population_plots.per_class_differences(
        x[:10], y[:10] - 0.5, c[:10] - 0.5, names=list("abcdefghij"), annotate=[2]
    )
    np.testing.assert_allclose(ax.collections[1].get_offsets(), np.c_[100 * x[:10], 100 * (y[:10] - 0.5)])
    assert [t.get_text() for t in ax.texts] == ["c"]


def test_bin_compare_predictions_smoke(population_dirs, tmp_path, root, bin_env):
    runs_root, a, b, _ = population_dirs
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        str(root / "bin" / "compare_predictions"),
        f"--group_a={runs_root}/*resnet62*",
        f"--group_b={runs_root}/*resnet14*",
        f"--out_dir={out}",
        "--permutations=50",
    ]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"prediction comparison: {out}" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert {"mean_a", "sem_a", "mean_b", "sem_b", "t", "df", "p", "n_a", "n_b"} <= set(summary["overall"])
    assert summary["overall"]["mean_a"] == pytest.approx(a.mean(), abs=1e-12)
    assert summary["overall"]["sem_b"] == pytest.approx(stats.sem(b.mean(1)), rel=1e-9)
    assert (
        summary["classes_significant_p05"]
        == sum(row["p"] is not None and row["p"] < 0.05 for row in summary["per_class"])
        >= 1
    )
    assert {"class", "name", "diff", "t", "p", "p_bh"} <= set(summary["per_class"][3]) and summary["per_class"][3][
        "name"
    ] == "cat"
    assert len((out / "per_class.csv").read_text().splitlines()) == 11
    for png in ("per_example.png", "per_class.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    empty = subprocess.run(
        [*cmd[:2], f"--group_a={tmp_path}/none*", f"--group_b={runs_root}/*", f"--out_dir={out}"],
        env=bin_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert empty.returncode == 1 and "error: No run directory" in empty.stderr and f"{tmp_path}/none*" in empty.stderr


def test_class_names_never_fetch_a_dataset(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import constants

    monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path))  # CIFAR-10 prepared nowhere
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lambda *a, **k: pytest.fail("downloaded"))
    assert compare_predictions.class_names(DataConfig("cifar10"), 10) == list(compare_predictions.CIFAR10_NAMES)


@pytest.mark.parametrize(
    "case",
    [
        "truncated",  # the default tier's one unreadable file; the others are the same kind
        *[
            pytest.param(c, marks=pytest.mark.slow)
            for c in ("empty", "keyless", "other-labels", "overlapping", "identical")
        ],
    ],
)
def test_bin_compare_predictions_bad_inputs(population_dirs, tmp_path, root, bin_env, case):
    runs_root, a, _, labels = population_dirs
    group_a, group_b = f"{runs_root}/*resnet62*", f"{runs_root}/*resnet14*"
    bad = runs_root / "cifar10-resnet14-w2-s0"
    npz = bad / "test_predictions.npz"
    if case == "truncated":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif case == "empty":
        npz.write_bytes(b"")
    elif case == "keyless":
        np.savez(npz, probs=np.load(npz)["probs"])
    elif case == "other-labels":
        other = labels.copy()
        other[0] = (other[0] + 1) % 10
        bad = write_run(runs_root, 14, 2, 7, a[0], other)
    elif case == "overlapping":
        group_b = f"{runs_root}/*-s[01]"  # resnet62 s0, s1 are in both groups
    elif case == "identical":
        group_b = group_a
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        str(root / "bin" / "compare_predictions"),
        f"--group_a={group_a}",
        f"--group_b={group_b}",
        f"--out_dir={out}",
    ]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=300)
    expected = {
        "truncated": f"error: Cannot read {npz} (BadZipFile: File is not a zip file); the run has not finished or the file is corrupt: retrain it with --overwrite.",
        "empty": f"error: Cannot read {npz} (EOFError: No data left in file); the run has not finished or the file is corrupt: retrain it with --overwrite.",
        "keyless": f"error: {npz} has no labels array; retrain the run with --overwrite.",
        "other-labels": f"error: Run {bad} has other test labels than {runs_root / 'cifar10-resnet62-w1-s0'}: its predictions are on other examples.",
        "overlapping": "error: Groups A and B share 2 runs (cifar10-resnet62-w1-s0, cifar10-resnet62-w1-s1): a population compared with itself shows no difference. Give patterns that match disjoint runs.",
        "identical": "error: Groups A and B share 4 runs (cifar10-resnet62-w1-s0, cifar10-resnet62-w1-s1, cifar10-resnet62-w1-s2, ...): a population compared with itself shows no difference. Give patterns that match disjoint runs.",
    }[case]
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
    assert result.returncode == 1 and errors == [expected], result.stderr[-2000:]
    assert not out.exists()


@pytest.mark.parametrize(
    "case",
    [
        "nan-probs",
        *[
            pytest.param(c, marks=pytest.mark.slow)
            for c in ("negative-probs", "fractional-labels", "labels-out-of-range")
        ],
    ],
)
def test_bin_compare_predictions_refuses_invalid_predictions(population_dirs, tmp_path, root, bin_env, case):
    """Probabilities that are not a distribution, or labels outside the classes, name their run, not a healthy one."""
    runs_root, _, _, _ = population_dirs
    bad = runs_root / "cifar10-resnet62-w1-s0"  # the first run read: its labels are the reference
    npz = bad / "test_predictions.npz"
    with np.load(npz) as f:
        probs, labels = f["probs"], f["labels"]
    if case == "nan-probs":
        probs[::3] = np.nan
    elif case == "negative-probs":
        probs = -probs
    elif case == "fractional-labels":
        labels = labels + 0.5
    else:
        labels = labels + 100
    np.savez(npz, probs=probs, labels=labels)
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        str(root / "bin" / "compare_predictions"),
        f"--group_a={runs_root}/*resnet62*",
        f"--group_b={runs_root}/*resnet14*",
        f"--out_dir={out}",
    ]
    result = subprocess.run(cmd, env=bin_env, capture_output=True, text=True, timeout=300)
    n = len(labels)
    expected = {
        "nan-probs": f"holds {(n + 2) // 3 * 10} non-finite probabilities (first in row 0); probabilities must be finite",
        "negative-probs": f"holds {n * 10} negative probabilities (first in row 0: -0.9); probabilities must be >= 0",
        "fractional-labels": f"holds {n} labels outside the integers in [0, 10) (first: row 0 holds {labels[0].item()!r})",
        "labels-out-of-range": f"holds {n} labels outside the integers in [0, 10) (first: row 0 holds {labels[0].item()})",
    }[case]
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
    assert result.returncode == 1, result.stderr[-2000:]
    assert errors == [f"error: Run {bad}: test_predictions.npz {expected}; retrain the run with --overwrite."]
    assert not out.exists()


def test_predictions_problem_accepts_real_distributions_only():
    probs = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
    assert runs.predictions_problem(probs, np.array([1, 0])) is None
    assert runs.predictions_problem(probs * (1 + 9e-4), np.array([1, 0])) is None  # within 1e-3
    assert "row 1 sums to 1.002" in runs.predictions_problem(probs + [[0, 0], [0.002, 0]], np.array([1, 0]))
    assert "row 1 holds 2" in runs.predictions_problem(probs, np.array([1, 2]))
    assert "row 0 holds -1" in runs.predictions_problem(probs, np.array([-1, 0]))
    assert runs.predictions_problem(probs, np.array([1.0, 0.0])) is None  # whole numbers stored as floats
