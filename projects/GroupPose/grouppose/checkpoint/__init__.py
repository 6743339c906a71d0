"""Conversion of checkpoints from other implementations into this project's naming."""

from .official import (
    BACKBONE_MAPPINGS,
    BackboneMapping,
    ConversionReport,
    OfficialArchitecture,
    check_architecture,
    convert_official_checkpoint,
    detectron2_checkpoint,
    infer_architecture,
    load_official_state_dict,
)
from .safe_load import (
    SafeCheckpointer,
    UnsafeCheckpointError,
    add_trust_pickle_argument,
    read_weights_file,
)
from .swin import SwinArchitecture, convert_imagenet_swin

__all__ = [
    "BACKBONE_MAPPINGS",
    "BackboneMapping",
    "ConversionReport",
    "OfficialArchitecture",
    "SafeCheckpointer",
    "SwinArchitecture",
    "UnsafeCheckpointError",
    "add_trust_pickle_argument",
    "check_architecture",
    "convert_imagenet_swin",
    "convert_official_checkpoint",
    "detectron2_checkpoint",
    "infer_architecture",
    "load_official_state_dict",
    "read_weights_file",
]
