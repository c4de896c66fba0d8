"""Taps: which intermediate representations of a model an analysis reads.

A tap is a layer name; its output is the representation. tfwd models name
their layers `stem_*`, `stage{s}_block{b}_*`, `pool` and `logits`, so the tap
kinds below are defined by name and work for every model built that way:

- "all": every layer's output except the input, in depth order (the paper's
  CKA heatmaps).
- "blocks": the stem's output, each block's output after its final ReLU
  (`..._out`), and the logits.
- "residual": for each block, the tensor just before the residual add (the
  last BN of the residual branch) and the add's output (the paper's probes).

Any functional or Sequential Keras model (Keras Applications, a user's own) works
with "all", with "re:PATTERN" (the layers whose names match the regular expression,
`re.search`, in depth order) and with explicit layer names. A nested model (a
Keras Applications base inside a Sequential, say) is one layer of the outer model:
its output can be tapped, the layers inside it cannot (tap the nested model itself).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import keras

from tfwd import _grams
from tfwd.layer_names import PATTERN_PREFIX, STAGE_PATTERN as _STAGE, TAP_KINDS


def _layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _block_prefix(name: str) -> str | None:
    match = _STAGE.match(name)
    return match.group(0)[:-1] if match else None


def _residual_taps(model: keras.Model, names: list[str]) -> list[str]:
    taps = []
    for i, name in enumerate(names):
        if not name.endswith("_add"):
            continue
        prefix = name[: -len("_add")]
        branch = [n for n in names[:i] if n.startswith(prefix + "_bn") and "shortcut" not in n]
        if not branch:
            raise ValueError(f"Cannot find the residual branch's last BN before layer {name!r}.")
        taps += [branch[-1], name]
    if not taps:
        raise ValueError(
            f"taps='residual' needs residual connections, and model {model.name!r} has no "
            "`*_add` layers (a plain network?). Use taps='blocks' or a list of layer names."
        )
    return taps


def tap_names(model: keras.Model, taps: str | Sequence[str] = "all") -> list[str]:
    """Names of the layers whose outputs `activation_model` returns, in depth order.

    Args:
        model: a functional or Sequential keras.Model ("blocks" and "residual" need
            tfwd's layer names).
        taps: "all", "blocks", "residual", "re:PATTERN" (layers whose names match,
            by `re.search`), or an explicit sequence of layer names (returned in the
            given order).

    Returns:
        A list of layer names.

    Raises:
        ValueError: for an unknown kind, an unknown layer name (naming the nearest),
            a pattern that matches nothing or does not compile, or taps="residual" on
            a model without residual adds.

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8)
        >>> tap_names(model, "re:_out$")
        ['stage1_block1_out', 'stage2_block1_out', 'stage3_block1_out']
    """
    names = _layer_names(model)
    if isinstance(taps, str):
        if taps == "all":
            return names
        if taps == "blocks":
            stem = [n for n in names if n.startswith("stem_")]
            blocks = [n for n in names if _block_prefix(n) and n.endswith("_out")]
            head = [n for n in names if n == "logits"]
            if not stem or not blocks or not head:
                raise ValueError(
                    f"Model {model.name!r} does not use tfwd's layer names (stem_*, stage*_block*_out, logits)."
                )
            return [stem[-1]] + blocks + head
        if taps == "residual":
            return _residual_taps(model, names)
        if taps.startswith(PATTERN_PREFIX):
            return _matching(model, names, taps)
        raise ValueError(
            f"`taps` must be one of {TAP_KINDS}, 're:PATTERN' or a list of layer names. Received: taps={taps!r}"
        )
    taps = list(taps)
    unknown = [t for t in taps if t not in names]
    if not taps:
        raise ValueError(f"`taps` must name at least one layer. Received: taps={taps!r}")
    if unknown:
        raise ValueError(f"`taps` lists {_describe_unknown(model, names, unknown)}. Received: taps={taps!r}")
    return taps


def _matching(model: keras.Model, names: list[str], taps: str) -> list[str]:
    pattern = taps[len(PATTERN_PREFIX) :]
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"`taps` pattern {pattern!r} is not a regular expression ({e}). Received: taps={taps!r}"
        ) from None
    matched = [n for n in names if regex.search(n)]
    if not matched:
        raise ValueError(
            f"`taps` pattern {pattern!r} matches none of the {len(names)} layers of model {model.name!r} "
            f"(from {names[0]!r} to {names[-1]!r}). Received: taps={taps!r}"
        )
    return matched


def _nested_layers(model: keras.Model) -> dict[str, str]:
    """Layer name -> name of the nested model holding it, for every model nested in `model`."""
    inside = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for name in _layer_names(layer):
                inside.setdefault(name, layer.name)
            for name in _nested_layers(layer):
                inside.setdefault(name, layer.name)
    return inside


def _describe_unknown(model: keras.Model, names: list[str], unknown: list[str]) -> str:
    """`unknown` in one phrase: each with the nested model holding it, or the nearest layer name."""
    inside = _nested_layers(model)
    parts = []
    for name in unknown:
        if name in inside:
            holder = inside[name]
            parts.append(f"{name!r} (inside the nested model {holder!r}: tap {holder!r} or that model itself)")
        else:
            near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            parts.append(f"{name!r} (nearest: {near[0]!r})" if near else repr(name))
    which = "a layer" if len(unknown) == 1 else "layers"
    return (
        f"{which} that model {model.name!r} does not have: {', '.join(parts)}; it has {len(names)} layer(s), "
        f"from {names[0]!r} to {names[-1]!r}"
    )


def activation_model(model: keras.Model, taps: str | Sequence[str] = "all") -> keras.Model:
    """A model that maps the input to the outputs of the tapped layers.

    Args:
        model: a functional or Sequential keras.Model (tfwd's, Keras Applications',
            a user's); not a subclassed one, whose layers' outputs are not a graph.
        taps: see `tap_names`.

    Returns:
        An `ActivationModel` (a functional keras.Model) sharing `model`'s weights
        whose output is a list of L tensors, each (batch, ...), ordered as
        `tap_names(model, taps)`. Call it with training=False to keep BN in
        inference mode; its outputs then tell `tfwd.metrics.CKA` which BN taps are
        rescalings of other taps, whose Gram matrices it shares.

    Raises:
        ValueError: for bad taps (see `tap_names`), a subclassed or unbuilt model,
            or a tapped layer called more than once or with several outputs.

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8)
        >>> acts = activation_model(model, taps="blocks")
        >>> [a.shape for a in acts(np.zeros((2, 32, 32, 3)), training=False)][:2]
        [TensorShape([2, 32, 32, 16]), TensorShape([2, 32, 32, 16])]
    """
    names = tap_names(model, taps)
    graph = _graph(model)
    outputs = [node.output_tensors[0] for node in _tap_nodes(graph, model.name, names)]
    inputs = graph.inputs[0] if len(graph.inputs) == 1 else graph.inputs
    acts = ActivationModel(inputs, outputs, name=f"{model.name}_taps")
    acts.channel_affine = tuple((j, i, bn.name) for j, (i, bn) in sorted(channel_affine_taps(model, names).items()))
    return acts


@keras.saving.register_keras_serializable(package="tfwd")
class ActivationModel(keras.Model):
    """The functional model of `activation_model`: in inference mode its outputs carry its BN taps' plan.

    `channel_affine` lists (j, i, BN layer name) for each tapped BatchNormalization j fed by tap i
    (`channel_affine_taps`). Called with training False or None, output j is tagged as output i
    times the BN's current `channel_scale` per channel, which `tfwd.metrics.CKA.update_state` reads:
    the BN's Gram matrix then comes from its input's per-channel Grams at no product of its own.
    """

    channel_affine: tuple[tuple[int, int, str], ...] = ()

    def call(self, inputs, training=None, mask=None, **kwargs):
        outputs = super().call(inputs, training=training, mask=mask, **kwargs)
        # Only in inference mode is a BN's output its input times a fixed scale plus a constant.
        if (training is None or training is False) and isinstance(outputs, list):
            for j, i, name in self.channel_affine:
                _grams.tag_channel_affine(outputs[j], outputs[i], channel_scale(self.get_layer(name)))
        return outputs


def _graph(model: keras.Model) -> keras.Model:
    """The functional graph of a model: itself if functional, the one a built Sequential keeps."""
    # Keras 3 keeps a functional model's nodes in `_nodes_by_depth` and a built Sequential's
    # graph in `_functional`; a subclassed model has neither (its call is arbitrary Python).
    graph = model if hasattr(model, "_nodes_by_depth") else getattr(model, "_functional", None)
    if graph is None or not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has no graph of layers to tap: use a functional or "
            "Sequential model built on a keras.Input (a subclassed keras.Model cannot be tapped)."
        )
    return graph


def _tap_nodes(graph: keras.Model, model_name: str, names: Sequence[str]) -> list:
    """Each named layer's node (its one call, with one output) in `graph` itself.

    `layer.output` is the output of the layer's first call, which belongs to another
    graph when the layer is a model nested in several models or rebuilt on loading;
    the node of `graph` is the one that is connected to `graph.inputs`.
    """
    nodes: dict[str, list] = {}
    for depth_nodes in graph._nodes_by_depth.values():
        for node in depth_nodes:
            nodes.setdefault(node.operation.name, []).append(node)
    taps = []
    for name in names:
        found = nodes.get(name, [])
        if len(found) != 1:
            raise ValueError(
                f"Layer {name!r} is called {len(found)} times in model {model_name!r}; a tap must be called once."
            )
        if len(found[0].output_tensors) != 1:
            raise ValueError(
                f"Layer {name!r} of model {model_name!r} has {len(found[0].output_tensors)} outputs; "
                "a tap must have one output tensor."
            )
        taps.append(found[0])
    return taps


def channel_affine_taps(model: keras.Model, names: Sequence[str]) -> dict[int, tuple[int, keras.layers.Layer]]:
    """Tapped BatchNormalizations fed by another tap: {j: (i, bn)} for `tfwd.metrics.CKA`.

    In inference mode names[j], a BatchNormalization over the last axis, is names[i]'s
    output times `channel_scale(bn)` per channel plus a constant, so the CKA metric can
    build both Gram matrices from one product (`CKA.update_state(channel_affine=...)`).

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8)
        >>> names = tap_names(model, "re:^stage1_block1_(conv1|bn1|relu1)$")
        >>> {j: (i, bn.name) for j, (i, bn) in channel_affine_taps(model, names).items()}
        {1: (0, 'stage1_block1_bn1')}
    """
    nodes = _tap_nodes(_graph(model), model.name, names)
    outputs = [node.output_tensors[0] for node in nodes]
    index = {id(t): i for i, t in enumerate(outputs)}
    pairs = {}
    for j, node in enumerate(nodes):
        layer, inputs = node.operation, node.input_tensors
        if not isinstance(layer, keras.layers.BatchNormalization) or len(inputs) != 1:
            continue
        i = index.get(id(inputs[0]))
        if i is not None and i < j and layer.axis in (-1, len(outputs[j].shape) - 1):
            pairs[j] = (i, layer)
    return pairs


def channel_scale(bn: keras.layers.BatchNormalization):
    """gamma / sqrt(moving_variance + epsilon): the per-channel factor of a BatchNormalization in inference mode."""
    scale = keras.ops.rsqrt(keras.ops.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    return scale * keras.ops.convert_to_tensor(bn.gamma) if bn.scale else scale


def parse_taps(text: str) -> str | list[str]:
    """A --taps flag value as `tap_names` takes it: a kind, "re:PATTERN", or a comma-separated list of names.

    Example:
        >>> parse_taps("all"), parse_taps("re:conv,bn"), parse_taps("stem_conv, logits")
        ('all', 're:conv,bn', ['stem_conv', 'logits'])
    """
    text = text.strip()
    if text in TAP_KINDS or text.startswith(PATTERN_PREFIX):
        return text
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"`taps` must be one of {TAP_KINDS}, 're:PATTERN' or layer names. Received: taps={text!r}")
    return names
