"""GroupPose-D2: Group Pose (ICCV 2023) as a Detectron2 project.

Importing this package registers the meta-architecture, backbones and datasets with
Detectron2's registries, as Detectron2 projects do.

Where torch or Detectron2 is not installed (a deployment machine), only ``grouppose.deploy``'s
ONNX Runtime predictor and ``grouppose.image_io`` are usable; the rest says what is missing.
"""

import warnings

# fvcore, which Detectron2 imports, compiles its losses with torch.jit.script at import time and
# torch deprecates that: a warning (printed twice) that no user of ours can act on. Only that
# one is silenced; our entry points import grouppose first so that this runs before Detectron2.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)

__version__ = "0.1.0"

__all__ = ["GroupPose", "GroupPosePredictor", "add_grouppose_config", "predict"]

# The packages the model side needs; a deployment install has neither.
_MODEL_REQUIREMENTS = ("torch", "detectron2")
try:
    import detectron2  # noqa: F401
    import torch  # noqa: F401
except ModuleNotFoundError as e:
    if e.name not in _MODEL_REQUIREMENTS:
        raise
    _MISSING_REQUIREMENT = e.name
else:
    _MISSING_REQUIREMENT = None
    from . import data  # noqa: E402, F401  (importing it registers the datasets)
    from .config import add_grouppose_config  # noqa: E402
    from .modeling import GroupPose  # noqa: E402
    from .predictor import GroupPosePredictor, predict  # noqa: E402


def __getattr__(name: str):
    """Only reached for names the import above could not define: say why."""
    if name in __all__ and _MISSING_REQUIREMENT is not None:
        raise ImportError(
            f"grouppose.{name} needs {' and '.join(_MODEL_REQUIREMENTS)}, and "
            f"'{_MISSING_REQUIREMENT}' is not installed; without them only grouppose.deploy "
            "(ONNX Runtime inference) is available"
        )
    raise AttributeError(f"module 'grouppose' has no attribute '{name}'")
