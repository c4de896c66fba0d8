"""The model families a run can train, by the `arch` name its config records.

`ARCHITECTURES` maps each name of `tfwd.run_settings.ARCHS` to what tfwd.runs and
tfwd.training need of that family: the run's model name, the model, the checks of its
settings, the ModelConfig fields bin/train's settings give, and the paper's recipe for
it. They look the arch up here instead of branching on its name; a new family is one
entry here and its settings in tfwd.run_settings.

An entry takes a run's model settings as any object with ModelConfig's attributes
(depth, width, residual, blocks, widths), so this module needs nothing of tfwd.runs.

Example:
    >>> from tfwd.runs import ModelConfig
    >>> ARCHITECTURES["imagenet_resnet"].name(ModelConfig.imagenet(blocks=(3, 4, 17, 3)))
    'resnet83'
    >>> ARCHITECTURES["cifar_resnet"].recipe["batch_size"]
    128
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
        fields: bin/train's settings (name -> value; absent ones take their defaults)
            -> the ModelConfig fields of this family. Raises TypeError or ValueError
            for values of the wrong type.
        recipe: the paper's TrainConfig fields for the family (epochs, batch size,
            learning rate, weight decay).
    """

    builder: Callable[..., keras.Model]
    name: Callable[[Any], str]
    build: Callable[[Any, int, tuple[int, int, int], float, bool], keras.Model]
    validate: Callable[[Any], None]
    fields: Callable[[Mapping[str, Any]], dict[str, Any]]
    recipe: Mapping[str, Any]


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
    return {
        "depth": settings.get("depth", 56),
        "width": float(settings.get("width", 1.0)),
        "residual": settings.get("residual", True),
    }


def _imagenet_build(model, num_classes, input_shape, weight_decay, synchronized_bn):
    return imagenet_resnet(
        model.blocks, model.widths, num_classes, input_shape, weight_decay=weight_decay, synchronized_bn=synchronized_bn
    )


def _imagenet_validate(model) -> None:
    check_stages(model.blocks or (), model.widths or ())
    if not model.residual:
        raise ValueError("imagenet_resnet has no plain (residual=False) variant.")


def _imagenet_fields(settings) -> dict[str, Any]:
    blocks = tuple(int(b) for b in settings.get("blocks", (3, 4, 6, 3)))
    widths = tuple(float(w) for w in settings.get("widths", (1, 1, 1, 1)))
    return {"depth": imagenet_depth(blocks), "blocks": blocks, "widths": widths}


# The paper's recipes (reference code): CIFAR (cifar_train.py, He et al. 2016) and
# ImageNet (large_scale_training/imagenet_train.py: batch 256, lr 0.1, 120 epochs,
# L2 5e-5), both SGD with momentum 0.9 and cosine decay.
ARCHITECTURES: dict[str, Architecture] = {
    "cifar_resnet": Architecture(
        builder=cifar_resnet,
        name=lambda model: model_name(model.depth, model.width, model.residual),
        build=_cifar_build,
        validate=_cifar_validate,
        fields=_cifar_fields,
        recipe={"epochs": 300, "batch_size": 128, "learning_rate": 0.1, "weight_decay": 1e-4},
    ),
    "imagenet_resnet": Architecture(
        builder=imagenet_resnet,
        name=lambda model: imagenet_model_name(model.blocks, model.widths),
        build=_imagenet_build,
        validate=_imagenet_validate,
        fields=_imagenet_fields,
        recipe={"epochs": 120, "batch_size": 256, "learning_rate": 0.1, "weight_decay": 5e-5},
    ),
}
