"""Conversion of checkpoints from other implementations into this project's naming."""

from .official import (
    convert_official_checkpoint,
    detectron2_checkpoint,
    infer_architecture,
    load_official_state_dict,
)
from .safe_load import (
    CorruptCheckpointError,
    SafeCheckpointer,
    UnsafeCheckpointError,
    add_trust_pickle_argument,
    read_weights_file,
)
from .swin import convert_imagenet_swin

__all__ = [
    "CorruptCheckpointError",
    "SafeCheckpointer",
    "UnsafeCheckpointError",
    "add_trust_pickle_argument",
    "convert_imagenet_swin",
    "convert_official_checkpoint",
    "detectron2_checkpoint",
    "infer_architecture",
    "load_official_state_dict",
    "read_weights_file",
]
