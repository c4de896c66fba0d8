"""Models that tfwd did not build: saved Keras models and their image input.

CKA reads any functional or Sequential Keras model (Keras Applications, a user's
own) whose one input is a batch of images (batch, height, width, channels).
"""

from __future__ import annotations

import os
import zipfile

import keras
from absl import logging

from tfwd.models import layers


def image_input(model: keras.Model) -> tuple[int | None, int | None, int | None]:
    """(height, width, channels) of a model's one image input (None where the size is free).

    Raises:
        ValueError: for a model without exactly one input of shape (batch, height, width, channels).

    Example:
        >>> image_input(tfwd.models.cifar_resnet(depth=8))
        (32, 32, 3)
    """
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            f"Model {model.name!r} has no defined input; build it on a keras.Input (batch, height, width, channels)."
        )
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        shapes = ", ".join(str(tuple(i.shape)) for i in inputs)
        raise ValueError(
            f"Model {model.name!r} takes inputs of shape {shapes}: CKA on images needs a model with one image input "
            "(batch, height, width, channels)."
        )
    return tuple(inputs[0].shape[1:])


def load_model(path: str) -> keras.Model:
    """A saved Keras model (.keras, or Keras' legacy .h5), without its optimizer; one-line errors otherwise."""
    if not os.path.isfile(path):
        raise ValueError(
            f"`models` must list saved Keras models (.keras files); {path} does not exist. Received: {path}"
        )
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"`models` must list saved Keras models (.keras zip archives written by model.save); {path} is not one. "
            f"Received: {path}"
        )
    try:
        return load_keras(path)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for files it cannot read
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"`models` must list saved Keras models that Keras can load; {path} fails ({type(e).__name__}: {detail}). "
            f"Received: {path}"
        ) from e


def load_keras(path: str) -> keras.Model:
    """keras.models.load_model(path, compile=False) with tfwd's fused BatchNormalization kernel swapped in.

    Files written before tfwd saved its BatchNormalization under Keras' own class name (they name
    "tfwd>BatchNormalization", which only loads where tfwd is imported) load too; one log line says so.
    """
    model = keras.models.load_model(path, compile=False)
    if any(type(layer) is layers.BatchNormalization for layer in layers._layers(model)):
        logging.info(
            "%s names tfwd's BatchNormalization class (saved by an earlier tfwd): converted on load to Keras' own; "
            "model.save() writes a file that plain Keras loads.",
            path,
        )
    return layers.fuse(model)
