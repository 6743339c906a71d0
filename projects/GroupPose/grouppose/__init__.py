"""GroupPose-D2: Group Pose (ICCV 2023) as a Detectron2 project.

Importing this package registers the meta-architecture, backbones and datasets with
Detectron2's registries, as Detectron2 projects do.
"""

import warnings

# fvcore, which Detectron2 imports, compiles its losses with torch.jit.script at import time and
# torch deprecates that: a warning (printed twice) that no user of ours can act on. Only that
# one is silenced; our entry points import grouppose first so that this runs before Detectron2.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)

from . import data  # noqa: E402, F401  (importing it registers the datasets)
from .config import add_grouppose_config  # noqa: E402
from .meta_arch import GroupPose  # noqa: E402
from .predictor import GroupPosePredictor, predict  # noqa: E402

__version__ = "0.1.0"

__all__ = ["GroupPose", "GroupPosePredictor", "add_grouppose_config", "predict"]
