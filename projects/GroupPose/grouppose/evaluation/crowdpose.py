"""CrowdPose keypoint evaluation (xtcocotools) as a Detectron2 DatasetEvaluator.

CrowdPose's protocol is COCO's keypoint AP with three differences, all implemented by
xtcocotools' ``COCOeval(..., iouType="keypoints_crowd", use_area=False)``:
- the OKS scale is 0.53 x the box area (CrowdPose annotations have no "area");
- a person counts as annotated when its "num_keypoints" > 0;
- besides AP / AP50 / AP75 (at most 20 detections per image) it reports AP on the easy,
  medium and hard images: crowd index ("crowdIndex" of each image) < 0.2, < 0.8, >= 0.8.
Results are percentages, like Detectron2's COCOEvaluator; a metric that cannot be computed
(e.g. no hard image) is NaN.
"""

import contextlib
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = ["CROWDPOSE_METRICS", "CrowdPoseEvaluator", "crowdpose_keypoint_ap"]

logger = logging.getLogger(__name__)

# In the order of xtcocotools' ``stats`` for "keypoints_crowd".
CROWDPOSE_METRICS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_E", "AP_M", "AP_H")


def _xtcocotools():
    """xtcocotools' (COCO, COCOeval), imported on first use: only CrowdPose evaluation needs
    the package, which ``make setup`` builds from source (its wheels need numpy 1)."""
    try:
        from xtcocotools.coco import COCO
        from xtcocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError(
            "CrowdPose evaluation needs xtcocotools: pip install --no-build-isolation "
            "--no-binary xtcocotools xtcocotools (with numpy and cython installed)"
        ) from error
    return COCO, COCOeval


def crowdpose_keypoint_ap(
    coco_gt, results: List[Dict], sigmas: Sequence[float]
) -> Dict[str, float]:
    """CrowdPose metrics of COCO-format keypoint results.

    Args:
        coco_gt: xtcocotools COCO of the ground truth, built from a json *file* (the easy /
            medium / hard split re-reads it).
        results: COCO results: "image_id", "category_id", "keypoints" (3K), "score". Not
            modified.
        sigmas: (K,) OKS sigmas.

    Returns:
        metric name (CROWDPOSE_METRICS) -> percentage, NaN when undefined.
    """
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        coco_eval = _xtcocotools()[1](
            coco_gt, coco_dt, "keypoints_crowd", sigmas=np.asarray(sigmas), use_area=False
        )
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.info("CrowdPose evaluation:\n" + output.getvalue())
    return {
        name: float(value * 100) if value >= 0 else float("nan")
        for name, value in zip(CROWDPOSE_METRICS, coco_eval.stats)
    }


def _check_crowdpose_json(dataset: Dict, json_file: str) -> None:
    """The fields xtcocotools' CrowdPose evaluation reads besides COCO's."""
    for image in dataset.get("images", []):
        if "crowdIndex" not in image:
            raise ValueError(
                f"{json_file}: image id {image.get('id')} has no 'crowdIndex', which the "
                "CrowdPose evaluation needs (use evaluator_type='coco' for other datasets)"
            )
    for annotation in dataset.get("annotations", []):
        if "num_keypoints" not in annotation:
            raise ValueError(
                f"{json_file}: annotation id {annotation.get('id')} has no 'num_keypoints', "
                "which the CrowdPose evaluation needs"
            )


class CrowdPoseEvaluator(DatasetEvaluator):
    """Evaluate keypoint predictions on a CrowdPose-format dataset (see the module docstring).

    Takes the model's outputs ``{"instances": Instances}`` with ``pred_keypoints`` (n, K, 3)
    (x, y in pixels of the original image, a per-keypoint score that must be > 0: xtcocotools
    skips a detection whose keypoint scores are all 0), ``scores`` (n,), ``pred_boxes`` and
    ``pred_classes``. ``evaluate()`` returns ``{"keypoints": {metric: percentage}}``.
    """

    def __init__(
        self,
        dataset_name: str,
        kpt_oks_sigmas: Sequence[float],
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has "json_file".
            kpt_oks_sigmas: (K,) OKS sigmas.
            output_dir: where to write "crowdpose_keypoint_results.json" (optional).
            distributed: gather predictions from all workers and evaluate on the main one.
        """
        metadata = self._metadata = MetadataCatalog.get(dataset_name)
        self._sigmas = tuple(float(s) for s in kpt_oks_sigmas)
        self._output_dir = output_dir
        self._distributed = distributed
        json_file = PathManager.get_local_path(metadata.json_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self._coco_gt = _xtcocotools()[0](json_file)
        # A test-split json without annotations can only be written out, not evaluated.
        self._do_evaluation = "annotations" in self._coco_gt.dataset
        if self._do_evaluation:
            _check_crowdpose_json(self._coco_gt.dataset, json_file)
        self._predictions: List[Dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for inp, out in zip(inputs, outputs):
            if "instances" in out:
                instances = out["instances"].to(torch.device("cpu"))
                self._predictions.extend(instances_to_coco_json(instances, inp["image_id"]))

    def _dataset_category_ids(self, results: List[Dict]) -> List[Dict]:
        # The loader's mapping (load_keypoint_json: the keypoint category is 0) when the dataset
        # was loaded, else Detectron2's numbering of the json's sorted category ids.
        to_contiguous = self._metadata.get("thing_dataset_id_to_contiguous_id") or {
            dataset_id: i for i, dataset_id in enumerate(sorted(self._coco_gt.getCatIds()))
        }
        to_dataset = {i: dataset_id for dataset_id, i in to_contiguous.items()}
        return [{**r, "category_id": to_dataset[r["category_id"]]} for r in results]

    def evaluate(self) -> Dict:
        if self._distributed:
            comm.synchronize()
            results = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            results = self._predictions
        results = self._dataset_category_ids(results)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "crowdpose_keypoint_results.json")
            with PathManager.open(path, "w") as f:
                json.dump(results, f)
        if not self._do_evaluation:
            logger.info("The dataset has no annotations: results written, not evaluated.")
            return {}
        if not results:
            logger.warning("[CrowdPoseEvaluator] no predictions: every metric is NaN")
            metrics = {name: float("nan") for name in CROWDPOSE_METRICS}
        else:
            metrics = crowdpose_keypoint_ap(self._coco_gt, results, self._sigmas)
        return OrderedDict(keypoints=metrics)
