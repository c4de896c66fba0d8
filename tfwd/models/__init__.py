"""Models and the taps that expose their intermediate representations."""

from tfwd.layer_names import PATTERN_PREFIX, TAP_KINDS, stage_boundaries, stage_of
from tfwd.models.cifar_resnet import blocks_per_stage, cifar_resnet, model_name, stage_channels
from tfwd.models.imagenet_resnet import check_stages, imagenet_depth, imagenet_model_name, imagenet_resnet
from tfwd.models.registry import ARCHITECTURES, Architecture
from tfwd.models.saved import image_input, load_model
from tfwd.models.taps import activation_model, channel_affine_taps, channel_scale, parse_taps, tap_names
