"""tfwd.metrics: the streaming CKA metric against float64 NumPy references and closed forms."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfwd import _grams, metrics
from tfwd.metrics import CKA, linear_cka


# An independent reference: Song et al. (2012)'s unbiased HSIC, written from the paper's Eq. 2
# (not the U-centring the library uses).
def song_hsic1(k, l):
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (
        np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ l @ one
    ) / (n * (n - 3))


def grams(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x @ x.T


def minibatch_cka_reference(xs, ys, weighting="pairs"):
    """sum_k w_k HSIC_1(K_k, L_k) / sqrt(sum_k w_k HSIC_1(K_k, K_k) sum_k w_k HSIC_1(L_k, L_k)) over paired
    batches, with w_k = n_k (n_k - 3) ("pairs", tfwd's pooling) or 1 ("equal")."""

    def w(x):
        return len(x) * (len(x) - 3) if weighting == "pairs" else 1.0

    kl = sum(w(x) * song_hsic1(grams(x), grams(y)) for x, y in zip(xs, ys))
    kk = sum(w(x) * song_hsic1(grams(x), grams(x)) for x in xs)
    ll = sum(w(y) * song_hsic1(grams(y), grams(y)) for y in ys)
    return kl / np.sqrt(kk * ll)


def feature_space_cka(x, y):
    """Biased linear CKA in feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), centred columns."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def layers(n=64, seed=0, dtype=np.float64):
    """Four related layers of different shapes, like a network's (conv maps, ReLU, dense)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 4, 4, 3))
    b = np.maximum(a.reshape(n, -1) @ rng.normal(size=(48, 30)), 0) + 5.0  # large common offset
    c = b @ rng.normal(size=(30, 10)) + 0.5 * rng.normal(size=(n, 10))
    d = rng.normal(size=(n, 7))
    return [v.astype(dtype) for v in (a, b, c, d)]


class TestReferences:
    def test_u_centring_equals_songs_formula(self):
        x, y = layers()[:2]
        assert metrics.hsic(grams(x), grams(y)) == pytest.approx(song_hsic1(grams(x), grams(y)), rel=1e-10)

    def test_biased_equals_feature_space_form(self):
        x, y = layers()[1:3]
        assert linear_cka(x, y) == pytest.approx(feature_space_cka(x, y), rel=1e-10)

    def test_constant_representation_is_zero(self):
        x = np.ones((10, 3))
        assert linear_cka(x, np.random.default_rng(0).normal(size=(10, 2)), unbiased=True) == 0.0

    def test_errors(self):
        with pytest.raises(ValueError, match="same number of examples"):
            linear_cka(np.ones((5, 2)), np.ones((6, 2)))
        with pytest.raises(ValueError, match="n >= 4"):
            linear_cka(np.eye(3), np.eye(3), unbiased=True)


class TestStreaming:
    def test_one_minibatch_equals_full_batch_unbiased_cka(self):
        acts = layers(n=128)
        cka = CKA()
        cka.update_state(acts)
        got = cka.result().numpy()
        for i in range(4):
            for j in range(4):
                expected = 1.0 if i == j else minibatch_cka_reference([acts[i]], [acts[j]])
                assert got[i, j] == pytest.approx(expected, abs=1e-10)
                assert got[i, j] == pytest.approx(linear_cka(acts[i], acts[j], unbiased=True), abs=1e-10)

    def test_float32_activations_within_1e6(self):
        acts64 = layers(n=256)
        cka = CKA()
        cka.update_state([a.astype(np.float32) for a in acts64])
        expected = [[minibatch_cka_reference([x], [y]) for y in acts64] for x in acts64]
        np.testing.assert_allclose(cka.result().numpy(), expected, atol=1e-6)

    @pytest.mark.parametrize("scale", [1e-11, 1e12])
    def test_float32_activations_of_any_scale(self, scale):
        # Activations of 1e-11 have Gram entries of 1e-19 whose products (1e-38) underflow
        # float32, and 1e12 ones overflow it: the metric must still match float64.
        acts64 = layers(n=128)
        cka = CKA()
        cka.update_state([(scale * a).astype(np.float32) for a in acts64] + [acts64[1].astype(np.float32)])
        expected = [[minibatch_cka_reference([x], [y]) for y in acts64 + acts64[1:2]] for x in acts64 + acts64[1:2]]
        np.testing.assert_allclose(cka.result().numpy(), expected, atol=1e-6)

    def test_streamed_minibatches_equal_pairs_weighted_estimates_including_ragged_last(self):
        acts = layers(n=250, seed=1)
        bounds = [(0, 64), (64, 128), (128, 192), (192, 250)]  # last batch is ragged (58)
        cka = CKA()
        for step, (lo, hi) in enumerate(bounds):
            cka.update_state([a[lo:hi] for a in acts])
            if step == 1:  # half streamed: check, then stream the rest and check again
                seen = bounds[:2]
                got = cka.result().numpy()
                assert got[1, 2] == pytest.approx(
                    minibatch_cka_reference([acts[1][lo:hi] for lo, hi in seen], [acts[2][lo:hi] for lo, hi in seen]),
                    abs=1e-10,
                )
        got = cka.result().numpy()
        for i, j in [(0, 1), (1, 2), (0, 3), (2, 3)]:
            expected = minibatch_cka_reference(
                [acts[i][lo:hi] for lo, hi in bounds], [acts[j][lo:hi] for lo, hi in bounds]
            )
            assert got[i, j] == pytest.approx(expected, abs=1e-10)
        assert float(cka.batches.numpy()) == 4

    def test_equal_batches_are_the_papers_mean_of_estimates(self):
        acts = layers(n=192, seed=2)
        cka = CKA()
        for lo in range(0, 192, 64):
            cka.update_state([a[lo : lo + 64] for a in acts])
        batches = [(lo, lo + 64) for lo in range(0, 192, 64)]
        for weighting in ("pairs", "equal"):
            reference = minibatch_cka_reference(
                [acts[1][a:b] for a, b in batches], [acts[2][a:b] for a, b in batches], weighting
            )
            assert cka.result().numpy()[1, 2] == pytest.approx(reference, abs=1e-10)

    def test_ragged_last_batch_pooled_by_pairs_lands_closer_to_full_batch(self):
        """Three batches of 64 and one of 7: pairs weighting is closer to full-batch CKA than equal weights."""
        pairs_errors, equal_errors = [], []
        for trial in range(40):
            rng = np.random.default_rng(100 + trial)
            x = rng.normal(size=(199, 12))
            y = x @ rng.normal(size=(12, 6)) + rng.normal(size=(199, 6)) * rng.uniform(0.5, 3.0)
            bounds = [(0, 64), (64, 128), (128, 192), (192, 199)]
            cka = CKA()
            for lo, hi in bounds:
                cka.update_state([x[lo:hi], y[lo:hi]])
            full = linear_cka(x, y, unbiased=True)
            equal = minibatch_cka_reference([x[a:b] for a, b in bounds], [y[a:b] for a, b in bounds], "equal")
            pairs_errors.append(abs(cka.result().numpy()[0, 1] - full))
            equal_errors.append(abs(equal - full))
        assert np.mean(pairs_errors) < 0.5 * np.mean(equal_errors)
        assert max(pairs_errors) < max(equal_errors)

    def test_batches_of_three_or_fewer_add_nothing_and_warn_once(self):
        acts = layers(n=67, seed=3)
        cka, reference = CKA(), CKA()
        reference.update_state([a[:64] for a in acts])
        cka.update_state([a[:64] for a in acts])
        with pytest.warns(UserWarning, match="n=3 <= 3 examples has no pairs"):
            cka.update_state([a[64:] for a in acts])
        np.testing.assert_array_equal(cka.result().numpy(), reference.result().numpy())
        assert float(cka.skipped.numpy()) == 1.0 and float(cka.batches.numpy()) == 1.0

    def test_symmetric_with_exact_unit_diagonal(self):
        cka = CKA()
        cka.update_state([a.astype(np.float32) for a in layers(n=100)])
        result = cka.result().numpy()
        assert np.all(np.diag(result) == 1.0)
        np.testing.assert_allclose(result, result.T, atol=1e-12)


class TestInvariances:
    def setup_method(self):
        rng = np.random.default_rng(3)
        self.x = rng.normal(size=(200, 20))
        self.y = np.tanh(self.x @ rng.normal(size=(20, 15))) + 0.3 * rng.normal(size=(200, 15))

    def _cka(self, x, y):
        cka = CKA()
        cka.update_state([x, y])
        return cka.result().numpy()[0, 1]

    def test_orthogonal_transform_and_isotropic_scaling(self):
        q = np.linalg.qr(np.random.default_rng(4).normal(size=(20, 20)))[0]
        base = self._cka(self.x, self.y)
        assert self._cka(self.x @ q, self.y) == pytest.approx(base, abs=1e-10)
        assert self._cka(7.5 * self.x, 0.01 * self.y) == pytest.approx(base, abs=1e-10)
        assert self._cka(self.x, self.x @ q * 3.0) == pytest.approx(1.0, abs=1e-10)

    def test_common_offset_changes_nothing(self):
        assert self._cka(self.x + 100.0, self.y) == pytest.approx(self._cka(self.x, self.y), abs=1e-9)

    def test_not_invariant_to_general_invertible_linear_maps(self):
        a = np.diag(np.geomspace(1, 100, 20)) @ np.linalg.qr(np.random.default_rng(5).normal(size=(20, 20)))[0]
        assert abs(np.linalg.det(a)) > 0
        assert abs(self._cka(self.x @ a, self.y) - self._cka(self.x, self.y)) > 0.05
        assert self._cka(self.x, self.x @ a) < 0.9


class TestModels:
    def test_cross_model_block_equals_joint_matrix_block(self):
        acts = layers(n=96, seed=6)
        a, b = acts[:2], acts[2:]
        joint, cross = CKA(), CKA()
        for lo, hi in [(0, 48), (48, 96)]:
            joint.update_state([x[lo:hi] for x in acts])
            cross.update_state([x[lo:hi] for x in a], [x[lo:hi] for x in b])
        np.testing.assert_allclose(cross.result().numpy(), joint.result().numpy()[:2, 2:], atol=1e-12)
        assert cross.result().shape == (2, 2) and cross.num_layers == (2, 2)
        np.testing.assert_allclose(cross.hsic_xx.numpy(), np.diag(joint.hsic_xy.numpy())[:2], rtol=1e-12)

    def test_split_blocks_of_many_models(self):
        acts = layers(n=64, seed=7)
        joint = CKA()
        joint.update_state(acts)
        blocks = metrics.split_blocks(joint.result(), [1, 2, 1])
        assert sorted(blocks) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
        assert blocks[(1, 2)].shape == (2, 1)
        np.testing.assert_array_equal(blocks[(1, 1)], joint.result().numpy()[1:3, 1:3])

    def test_independent_features_unbiased_near_zero_biased_not(self):
        # Small n: the biased estimator is inflated (MONAI PR #9129 reports 0.198 at n=32).
        rng = np.random.default_rng(8)
        unbiased, biased = [], []
        for _ in range(20):
            x, y = rng.normal(size=(32, 64)), rng.normal(size=(32, 64))
            cka = CKA()
            cka.update_state([x, y])
            unbiased.append(cka.result().numpy()[0, 1])
            biased.append(linear_cka(x, y, unbiased=False))
        assert abs(np.mean(unbiased)) < 0.03
        assert np.mean(biased) > 0.3


class TestDegenerate:
    def test_constant_layer_is_zero_off_diagonal_and_one_on_it(self):
        rng = np.random.default_rng(9)
        x = rng.normal(size=(50, 8)).astype(np.float32)
        const = np.full((50, 5), 0.1, np.float32)
        cka = CKA()
        cka.update_state([x, const, x * 2])
        result = cka.result().numpy()
        assert np.all(np.isfinite(result))
        np.testing.assert_array_equal(result[1], [0.0, 1.0, 0.0])
        np.testing.assert_array_equal(result[:, 1], [0.0, 1.0, 0.0])
        assert result[0, 2] == pytest.approx(1.0, abs=1e-6)

    def test_layer_constant_in_one_batch_only(self):
        rng = np.random.default_rng(10)
        x = rng.normal(size=(40, 6))
        y = x @ rng.normal(size=(6, 6))
        y_first_const = y.copy()
        y_first_const[:20] = 3.0
        cka = CKA()
        for lo, hi in [(0, 20), (20, 40)]:
            cka.update_state([x[lo:hi], y_first_const[lo:hi]])
        kl = song_hsic1(grams(x[20:]), grams(y[20:]))
        kk = song_hsic1(grams(x[:20]), grams(x[:20])) + song_hsic1(grams(x[20:]), grams(x[20:]))
        ll = song_hsic1(grams(y[20:]), grams(y[20:]))
        assert cka.result().numpy()[0, 1] == pytest.approx(kl / np.sqrt(kk * ll), abs=1e-10)

    @pytest.mark.parametrize(
        "acts,match",
        [
            (lambda: [np.ones((8, 2)), np.ones((9, 2))], "same batch size"),
            (lambda: [], "non-empty list"),
            (lambda: np.ones((8, 2)), "list"),
        ],
        ids=["batch-sizes", "empty", "not-a-list"],
    )
    def test_static_errors(self, acts, match):
        with pytest.raises(ValueError, match=match):
            CKA().update_state(acts())

    def test_cross_batch_sizes_must_match(self):
        with pytest.raises(ValueError, match="same batch size"):
            CKA().update_state([np.ones((8, 2))], [np.ones((9, 2))])

    @pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
    def test_non_finite_activations(self, bad):
        x = np.random.default_rng(0).normal(size=(16, 4))
        x[3, 1] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="layer 1 has NaN or Inf"):
            CKA().update_state([np.ones((16, 2)) * np.arange(16)[:, None], x])

    def test_dynamic_batch_under_four_adds_nothing_at_run_time(self):
        cka = CKA(num_layers=1)
        step = tf.function(lambda x: cka.update_state([x]), input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        step(tf.ones([8, 3]) * tf.range(8.0)[:, None] ** 2)
        before = cka.hsic_xy.numpy().copy()
        step(tf.ones([3, 3]) * tf.range(3.0)[:, None])
        np.testing.assert_array_equal(cka.hsic_xy.numpy(), before)
        assert float(cka.skipped.numpy()) == 1.0

    def test_empty_minibatch_adds_nothing(self):
        acts = layers(n=40, seed=11)
        cka, reference = CKA(), CKA()
        cka.update_state(acts)
        cka.update_state([a[:0] for a in acts])
        reference.update_state(acts)
        np.testing.assert_array_equal(cka.hsic_xy.numpy(), reference.hsic_xy.numpy())
        assert float(cka.batches.numpy()) == 1.0

    def test_layer_count_must_not_change(self):
        cka = CKA()
        cka.update_state([np.eye(5), np.eye(5)])
        with pytest.raises(ValueError, match="accumulates 2 layers"):
            cka.update_state([np.eye(5)] * 3)


class TestChannelAffine:
    """A layer that is another times a per-channel scale plus a constant (BN in inference mode) shares its Grams."""

    @staticmethod
    def conv_and_bn(seed=0, n=40, shape=(16, 16, 5)):
        rng = np.random.default_rng(seed)
        conv = rng.normal(size=(n, *shape)) + rng.normal(size=shape[-1])
        scale = rng.uniform(0.2, 3.0, size=shape[-1]) * rng.choice([-1.0, 1.0], size=shape[-1])
        scale[1] = 0.0  # a channel the BN switches off
        bn = conv * scale + rng.normal(size=shape[-1])
        relu = np.maximum(bn, 0)
        return conv, bn, relu, scale

    def test_derived_gram_equals_float64_reference_without_reading_the_layer(self):
        batches = [self.conv_and_bn(seed) for seed in range(2)]
        cka = CKA()
        for conv, bn, relu, scale in batches:
            # The BN's activations are replaced by noise: the result can only be right if they are not read.
            noise = np.random.default_rng(9).normal(size=bn.shape).astype(np.float32)
            cka.update_state([conv.astype(np.float32), noise, relu.astype(np.float32)], channel_affine={1: (0, scale)})
        for a, b in [(0, 1), (0, 2), (1, 2)]:
            expected = minibatch_cka_reference([v[a] for v in batches], [v[b] for v in batches])
            assert cka.result().numpy()[a, b] == pytest.approx(expected, abs=1e-6)
        assert cka.result().numpy()[0, 1] < 0.99  # the scale is not uniform: CKA(conv, BN) is not 1

    def test_small_layers_compute_their_own_gram(self):
        conv, bn, _, scale = self.conv_and_bn(shape=(4, 4, 3))  # 16 positions: below CHANNEL_GRAM_MIN_POSITIONS
        hinted, plain = CKA(), CKA()
        hinted.update_state([conv, bn], channel_affine={1: (0, scale)})
        plain.update_state([conv, bn])
        np.testing.assert_allclose(hinted.result().numpy(), plain.result().numpy(), atol=1e-12)

    def test_plan_names_how_each_gram_is_made(self):
        conv, bn, relu, scale = self.conv_and_bn(n=4, shape=(16, 16, 8))  # 256 positions, 2,048 features
        thin_conv, thin_bn, _, thin_scale = self.conv_and_bn(n=4, shape=(16, 16, 7))  # 256 positions, 1,792
        small_conv, small_bn, _, small_scale = self.conv_and_bn(n=4, shape=(4, 4, 3))  # 16 positions, 48 features
        plan = _grams.gram_plan(
            [conv, bn, relu, thin_conv, thin_bn, small_conv, small_bn],
            {1: (0, scale), 4: (3, thin_scale), 6: (5, small_scale)},
        )
        assert plan == ["channel halves", "derived", "halves", "channel", "derived", "full", "full"]

    @pytest.mark.parametrize(
        "hint,match",
        [({0: (1, np.ones(5))}, "source must come first"), ({1: (0, np.ones(4))}, "not a per-channel rescaling")],
        ids=["order", "scale-shape"],
    )
    def test_bad_hints(self, hint, match):
        conv, bn, _, _ = self.conv_and_bn()
        with pytest.raises(ValueError, match=match):
            CKA().update_state([conv, bn], channel_affine=hint)


class TestKerasContract:
    def test_get_config_round_trip_and_reset(self):
        acts = layers(n=32)
        cka = CKA(dtype="float32", check_finite=False, name="my_cka")
        cka.update_state(acts)
        config = cka.get_config()
        assert config == {
            "num_layers": 4,
            "dtype": "float32",
            "check_finite": False,
            "gram_dtype": None,
            "name": "my_cka",
        }
        clone = CKA.from_config(json.loads(json.dumps(config)))
        clone.update_state(acts)
        np.testing.assert_allclose(clone.result().numpy(), cka.result().numpy(), atol=1e-6)
        cka.reset_state()
        assert all(np.all(v.numpy() == 0) for v in cka.variables)
        cka.update_state([a[:16] for a in acts])
        fresh = CKA()
        fresh.update_state([a[:16] for a in acts])
        np.testing.assert_allclose(cka.result().numpy(), fresh.result().numpy(), atol=1e-6)

    def test_float32_accumulators_close_to_float64(self):
        acts = [a.astype(np.float32) for a in layers(n=200)]
        c32, c64 = CKA(dtype="float32"), CKA()
        for lo in range(0, 200, 50):
            c32.update_state([a[lo : lo + 50] for a in acts])
            c64.update_state([a[lo : lo + 50] for a in acts])
        np.testing.assert_allclose(c32.result().numpy(), c64.result().numpy(), atol=1e-5)

    def test_bfloat16_grams_only_where_the_cpu_has_them(self, monkeypatch):
        acts = [a.astype(np.float32) for a in layers(n=256, seed=12)]
        exact = CKA()
        exact.update_state(acts)
        monkeypatch.setattr(metrics, "native_bfloat16", lambda: True)
        fast = CKA(gram_dtype="bfloat16")
        assert fast.gram_dtype == "bfloat16"
        fast.update_state(acts)
        difference = np.abs(fast.result().numpy() - exact.result().numpy()).max()
        assert 0 < difference < 2e-2
        monkeypatch.setattr(metrics, "native_bfloat16", lambda: False)
        with pytest.warns(UserWarning, match="no native bfloat16"):
            fallback = CKA(gram_dtype="bfloat16")
        assert fallback.gram_dtype == "float32" and fallback.get_config()["gram_dtype"] == "bfloat16"
        fallback.update_state(acts)
        np.testing.assert_allclose(fallback.result().numpy(), exact.result().numpy(), atol=1e-6)
        with pytest.raises(ValueError, match="gram_dtype"):
            CKA(gram_dtype="int8")

    def test_native_bfloat16_reads_the_cpu_flags(self):
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        assert metrics.native_bfloat16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))

    def test_native_bfloat16_is_off_when_onednn_is_limited_below_it(self, monkeypatch):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert not metrics.native_bfloat16()

    def test_tf_function_does_not_retrace_per_batch(self):
        acts = [tf.constant(a, tf.float32) for a in layers(n=160)]
        cka = CKA()

        @tf.function
        def step(batch):
            cka.update_state(batch)

        for lo in range(0, 160, 32):
            step([a[lo : lo + 32] for a in acts])
        traces = step.experimental_get_tracing_count()
        for lo in range(0, 160, 32):
            step([a[lo : lo + 32] for a in acts])
        assert step.experimental_get_tracing_count() == traces <= 2
        eager = CKA()
        for lo in range(0, 160, 32):
            eager.update_state([a[lo : lo + 32] for a in acts])
            eager.update_state([a[lo : lo + 32] for a in acts])
        # Graph and eager runs may order float32 sums differently (U-centring runs in float32).
        np.testing.assert_allclose(cka.result().numpy(), eager.result().numpy(), atol=1e-6)


@pytest.mark.parametrize("features", [_grams.SYMMETRIC_MIN_FEATURES - 1, _grams.SYMMETRIC_MIN_FEATURES + 3])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_gram_equals_the_float64_product_whole_or_from_row_halves(features, n):
    # From SYMMETRIC_MIN_FEATURES on, the Gram is built from row halves; an odd n gives unequal
    # halves, n = 1 an empty one; a None batch dimension is the traced case.
    x = np.random.default_rng(n).normal(size=(n, features))
    gram = tf.function(_grams.gram, input_signature=[tf.TensorSpec([None, features], tf.float64)])
    np.testing.assert_allclose(gram(tf.constant(x)).numpy(), x @ x.T, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("channels", [7, 9])  # 16 x 16 positions: 1,792 features (whole) or 2,304 (row halves)
@pytest.mark.parametrize("n", [1, 7, 64])
def test_weighted_channel_grams_equal_the_float64_sums(channels, n):
    # Every weighted sum of per-channel Grams, sum_c w_kc X_c X_c^T, at once; an odd n gives
    # unequal halves, n = 1 an empty one; a None batch dimension is the traced case.
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 16, 16, channels))
    weights = np.stack([np.ones(channels), rng.uniform(0.0, 3.0, size=channels)])
    flat = x.reshape(n, -1, channels)
    expected = np.einsum("kc,ipc,jpc->kij", weights, flat, flat)
    grams = tf.function(
        _grams.channel_grams,
        input_signature=[tf.TensorSpec([None, 16, 16, channels], tf.float64), tf.TensorSpec([2, channels], tf.float64)],
    )
    np.testing.assert_allclose(grams(tf.constant(x), tf.constant(weights)).numpy(), expected, rtol=1e-12, atol=1e-10)


def test_mirrored_strategy_equals_single_device_on_the_same_split(tmp_path):
    """Two logical CPUs: each replica's half of a global batch is one minibatch, summed across replicas."""
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfwd.metrics import CKA
        rng = np.random.default_rng(0)
        x = rng.normal(size=(192, 12)).astype("float32")
        w = rng.normal(size=(12, 9)).astype("float32")
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            cka = CKA(num_layers=3)
        ds = tf.data.Dataset.from_tensor_slices(x).batch(64)   # global batches of 64 -> 32 per replica
        dist = strategy.experimental_distribute_dataset(ds)

        @tf.function
        def step(batch):
            def replica(b):
                h = tf.matmul(b, w)
                cka.update_state([b, tf.nn.relu(h), tf.tanh(h)])
            strategy.run(replica, args=(batch,))

        halves = []
        for batch in dist:
            step(batch)
            halves += [v.numpy() for v in strategy.experimental_local_results(batch)]
        single = CKA()
        for h in halves:
            hh = h @ w
            single.update_state([h, np.maximum(hh, 0), np.tanh(hh)])
        assert [len(h) for h in halves] == [32] * 6, [len(h) for h in halves]
        np.testing.assert_allclose(cka.result().numpy(), single.result().numpy(), atol=1e-6)
        assert float(cka.batches.numpy()) == 6.0
        print("OK", cka.result().numpy()[0, 1])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


JAX_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from tfwd.metrics import CKA

    acts = [np.asarray(a, np.float32) for a in np.load(sys.argv[1]).values()]
    cka = CKA(num_layers=len(acts))
    state = [v.value for v in cka.variables]
    step = jax.jit(lambda state, batch: cka.stateless_update_state(state, batch))
    for lo, hi in [(0, 64), (64, 128), (128, 150)]:
        state = step(state, [a[lo:hi] for a in acts])
    cross = CKA(num_layers=(1, 2))
    cross_state = jax.jit(lambda s, a, b: cross.stateless_update_state(s, a, b))(
        [v.value for v in cross.variables], acts[:1], acts[1:3])
    try:
        CKA().stateless_update_state([], acts)
        error = None
    except ValueError as e:
        error = str(e)
    import keras
    print(json.dumps({"backend": keras.backend.backend(),
                      "result": np.asarray(cka.stateless_result(state)).tolist(),
                      "cross": np.asarray(cross.stateless_result(cross_state)).tolist(),
                      "error": error}))
    """
)


def test_jax_backend_inside_jit_matches_the_float64_reference(tmp_path):
    acts = layers(n=150, seed=21)
    np.savez(tmp_path / "acts.npz", *acts)
    env = {k: v for k, v in __import__("os").environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "acts.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax"
    bounds = [(0, 64), (64, 128), (128, 150)]
    for i in range(4):
        for j in range(4):
            expected = (
                1.0
                if i == j
                else minibatch_cka_reference([acts[i][a:b] for a, b in bounds], [acts[j][a:b] for a, b in bounds])
            )
            assert out["result"][i][j] == pytest.approx(expected, abs=1e-6)
    for j in (1, 2):
        assert out["cross"][0][j - 1] == pytest.approx(
            minibatch_cka_reference([acts[0][:150]], [acts[j][:150]]), abs=1e-6
        )
    assert out["error"].startswith("CKA.stateless_update_state needs the layer count up front")
