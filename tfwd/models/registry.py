"""The model families a run can train, by the `arch` name its config records.

`ARCHITECTURES` maps each `arch` name (`tfwd.run_settings.ARCHS` is its keys) to what
tfwd.runs and tfwd.training need of that family: the run's model name, the model, the
checks of its settings and the ModelConfig fields bin/train's settings give. They look
the arch up here instead of branching on its name; a new family is one entry here and
its settings, their defaults and its training recipe in tfwd.run_settings.

An entry takes a run's model settings as any object with ModelConfig's attributes
(depth, width, residual, blocks, widths), so this module needs nothing of tfwd.runs.

Example:
    >>> from tfwd.runs import ModelConfig
    >>> ARCHITECTURES["imagenet_resnet"].name(ModelConfig.imagenet(blocks=(3, 4, 17, 3)))
    'resnet83'
    >>> ARCHITECTURES["cifar_resnet"].fields({"depth": 20, "width": 2, "residual": True})
    {'depth': 20, 'width': 2.0, 'residual': True}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import keras

from tfwd.models.cifar_resnet import blocks_per_stage, cifar_resnet, model_name, stage_channels
from tfwd.models.imagenet_resnet import check_stages, imagenet_depth, imagenet_model_name, imagenet_resnet


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One model family.

    Attributes:
        builder: the public function that builds the family's models.
        name: model settings -> the model's short name ("resnet20-w1", "resnet50").
        build: (model settings, num_classes, input_shape, weight_decay, synchronized_bn)
            -> the untrained keras.Model, from `builder`.
        validate: model settings -> None; raises ValueError for settings the family
            cannot build.
        fields: the family's model settings (name -> value, every one given:
            `tfwd.run_settings.defaults` fills in those a run leaves out) -> the
            ModelConfig fields of this family. Raises TypeError or ValueError for
            values of the wrong type.
    """

    builder: Callable[..., keras.Model]
    name: Callable[[Any], str]
    build: Callable[[Any, int, tuple[int, int, int], float, bool], keras.Model]
    validate: Callable[[Any], None]
    fields: Callable[[Mapping[str, Any]], dict[str, Any]]


def _cifar_build(model, num_classes, input_shape, weight_decay, synchronized_bn):
    return cifar_resnet(
        model.depth,
        model.width,
        num_classes=num_classes,
        residual=model.residual,
        input_shape=input_shape,
        weight_decay=weight_decay,
        synchronized_bn=synchronized_bn,
    )


def _cifar_validate(model) -> None:
    blocks_per_stage(model.depth)
    stage_channels(model.width)


def _cifar_fields(settings) -> dict[str, Any]:
    return {"depth": settings["depth"], "width": float(settings["width"]), "residual": settings["residual"]}


def _imagenet_build(model, num_classes, input_shape, weight_decay, synchronized_bn):
    return imagenet_resnet(
        model.blocks, model.widths, num_classes, input_shape, weight_decay=weight_decay, synchronized_bn=synchronized_bn
    )


def _imagenet_validate(model) -> None:
    check_stages(model.blocks or (), model.widths or ())
    if not model.residual:
        raise ValueError("imagenet_resnet has no plain (residual=False) variant.")


def _imagenet_fields(settings) -> dict[str, Any]:
    blocks = tuple(int(b) for b in settings["blocks"])
    widths = tuple(float(w) for w in settings["widths"])
    return {"depth": imagenet_depth(blocks), "blocks": blocks, "widths": widths}


ARCHITECTURES: dict[str, Architecture] = {
    "cifar_resnet": Architecture(
        builder=cifar_resnet,
        name=lambda model: model_name(model.depth, model.width, model.residual),
        build=_cifar_build,
        validate=_cifar_validate,
        fields=_cifar_fields,
    ),
    "imagenet_resnet": Architecture(
        builder=imagenet_resnet,
        name=lambda model: imagenet_model_name(model.blocks, model.widths),
        build=_imagenet_build,
        validate=_imagenet_validate,
        fields=_imagenet_fields,
    ),
}
