"""GroupPose-D2: Group Pose (ICCV 2023) as a Detectron2 project.

Importing this package registers the meta-architecture, backbones and datasets with
Detectron2's registries, as Detectron2 projects do.
"""

from . import data  # noqa: F401  (importing it registers the datasets)
from .config import add_grouppose_config
from .meta_arch import GroupPose
from .predictor import GroupPosePredictor, predict

__version__ = "0.1.0"

__all__ = ["GroupPose", "GroupPosePredictor", "add_grouppose_config", "predict"]
