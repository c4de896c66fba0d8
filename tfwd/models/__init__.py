"""Models and the taps that expose their intermediate representations."""

from tfwd.models.cifar_resnet import blocks_per_stage, cifar_resnet, model_name, stage_channels
from tfwd.models.taps import (
    PATTERN_PREFIX,
    TAP_KINDS,
    activation_model,
    parse_taps,
    stage_boundaries,
    stage_of,
    tap_names,
)
from tfwd.models.saved import image_input, load_model
from tfwd.models.imagenet_resnet import check_stages, imagenet_depth, imagenet_model_name, imagenet_resnet
