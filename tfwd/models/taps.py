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
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

TAP_KINDS = ("all", "blocks", "residual")
_STAGE = re.compile(r"^stage(\d+)_block(\d+)_")


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
        model: a tfwd model (or any functional keras.Model using tfwd's layer names).
        taps: "all", "blocks", "residual", or an explicit sequence of layer names
            (returned in the given order).

    Returns:
        A list of layer names.

    Raises:
        ValueError: for an unknown kind, an unknown layer name, or taps="residual"
            on a model without residual adds.
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
                raise ValueError(f"Model {model.name!r} does not use tfwd's layer names (stem_*, stage*_block*_out, logits).")
            return [stem[-1]] + blocks + head
        if taps == "residual":
            return _residual_taps(model, names)
        raise ValueError(f"`taps` must be one of {TAP_KINDS} or a list of layer names. Received: taps={taps!r}")
    taps = list(taps)
    unknown = [t for t in taps if t not in names]
    if unknown or not taps:
        raise ValueError(
            f"`taps` lists layers that model {model.name!r} does not have: {unknown} "
            f"(it has {len(names)} layers, from {names[0]!r} to {names[-1]!r}). Received: taps={taps!r}"
        )
    return taps


def activation_model(model: keras.Model, taps: str | Sequence[str] = "all") -> keras.Model:
    """A model that maps the input to the outputs of the tapped layers.

    Args:
        model: a functional keras.Model.
        taps: see `tap_names`.

    Returns:
        A keras.Model sharing `model`'s weights whose output is a list of L
        tensors, each (batch, ...), ordered as `tap_names(model, taps)`. Call it
        with training=False to keep BN in inference mode.

    Example:
        >>> model = tfwd.models.cifar_resnet(depth=8)
        >>> acts = activation_model(model, taps="blocks")
        >>> [a.shape for a in acts(np.zeros((2, 32, 32, 3)), training=False)][:2]
        [TensorShape([2, 32, 32, 16]), TensorShape([2, 32, 32, 16])]
    """
    names = tap_names(model, taps)
    outputs = [model.get_layer(n).output for n in names]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_taps")


def stage_of(name: str) -> int:
    """The stage a layer belongs to: 0 for the stem (and input), s for stage{s}_*, -1 for the head."""
    match = _STAGE.match(name)
    if match:
        return int(match.group(1))
    return 0 if name.startswith("stem") or name == "images" else -1


def stage_boundaries(names: Sequence[str]) -> list[int]:
    """Indices i where names[i] starts a new stage (for marking heatmaps and plots)."""
    stages = [stage_of(n) for n in names]
    return [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
