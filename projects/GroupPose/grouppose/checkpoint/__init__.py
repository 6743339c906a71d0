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

__all__ = [
    "BACKBONE_MAPPINGS",
    "BackboneMapping",
    "ConversionReport",
    "OfficialArchitecture",
    "check_architecture",
    "convert_official_checkpoint",
    "detectron2_checkpoint",
    "infer_architecture",
    "load_official_state_dict",
]
