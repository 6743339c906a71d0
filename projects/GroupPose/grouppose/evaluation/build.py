"""Pick the keypoint evaluator a dataset needs: COCO's (pycocotools) or CrowdPose's."""

from typing import List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from grouppose.evaluation.coco import KeypointCOCOEvaluator, keypoint_ground_truth
from grouppose.evaluation.crowdpose import CrowdPoseEvaluator
from grouppose.modeling.oks import oks_sigmas

__all__ = [
    "build_keypoint_evaluator",
    "evaluation_oks_sigmas",
    "keypoint_evaluator",
    "keypoint_oks_sigmas",
]


def keypoint_oks_sigmas(cfg: CfgNode, dataset_name: str) -> List[float]:
    """``evaluation_oks_sigmas`` of cfg.TEST.KEYPOINT_OKS_SIGMAS."""
    return evaluation_oks_sigmas(dataset_name, cfg.TEST.KEYPOINT_OKS_SIGMAS)


def evaluation_oks_sigmas(dataset_name: str, sigmas: Sequence[float] = ()) -> List[float]:
    """The OKS sigmas to evaluate ``dataset_name`` with (``oks_sigmas``, the chain training
    uses too): ``sigmas`` (TEST.KEYPOINT_OKS_SIGMAS) when given, else the dataset's
    ``kpt_oks_sigmas`` metadata, else the standard ones for its number of keypoints.

    Raises:
        ValueError when the dataset has no keypoint_names, or the sigmas do not fit them.
    """
    names = MetadataCatalog.get(dataset_name).get("keypoint_names")
    if names is None:
        raise ValueError(f"dataset '{dataset_name}' has no keypoint_names metadata")
    return oks_sigmas(len(names), sigmas, [dataset_name], source="cfg.TEST.KEYPOINT_OKS_SIGMAS")


def build_keypoint_evaluator(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluator:
    """``keypoint_evaluator`` with cfg.TEST.KEYPOINT_OKS_SIGMAS."""
    return keypoint_evaluator(dataset_name, output_dir, cfg.TEST.KEYPOINT_OKS_SIGMAS)


def keypoint_evaluator(
    dataset_name: str, output_dir: Optional[str] = None, oks_sigmas: Sequence[float] = ()
) -> DatasetEvaluator:
    """Keypoint evaluator for a registered dataset, with ``evaluation_oks_sigmas``.

    ``evaluator_type`` "crowdpose" (crowdpose_* datasets): ``CrowdPoseEvaluator`` (xtcocotools).
    Otherwise (COCO, synthetic, custom K): ``KeypointCOCOEvaluator``, Detectron2's
    ``COCOEvaluator`` on the "keypoints" task with the official pycocotools (the fast one needs
    Detectron2's C++ extension) and the dataset's OKS sigmas (see ``keypoint_oks_sigmas``), on
    the json as checked by ``keypoint_ground_truth``: missing fields and ambiguous categories
    fail here, before inference, and a ground truth without labeled people is a warning here
    and NaN metrics later (see ``grouppose.evaluation.coco``).

    The dataset is loaded first unless it already was in this process: that sets the category
    id mapping COCOEvaluator needs, generates a synthetic dataset that does not exist yet, and
    fails with an error naming the file for other missing datasets.
    """
    metadata = MetadataCatalog.get(dataset_name)
    if metadata.get("thing_dataset_id_to_contiguous_id") is None:
        DatasetCatalog.get(dataset_name)
    json_file = metadata.get("json_file")
    sigmas = evaluation_oks_sigmas(dataset_name, oks_sigmas)
    if metadata.get("evaluator_type") == "crowdpose":
        return CrowdPoseEvaluator(dataset_name, sigmas, output_dir=output_dir)
    if json_file is None:  # Detectron2 converts the dataset dicts to a COCO json itself
        return COCOEvaluator(
            dataset_name, tasks=("keypoints",), distributed=True, output_dir=output_dir,
            use_fast_impl=False, kpt_oks_sigmas=sigmas,
        )
    ground_truth = keypoint_ground_truth(json_file, dataset_name)
    return KeypointCOCOEvaluator(dataset_name, ground_truth, sigmas, output_dir=output_dir)
