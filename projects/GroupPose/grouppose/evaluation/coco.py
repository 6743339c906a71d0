"""COCO keypoint evaluation (pycocotools through Detectron2's COCOEvaluator) on a ground truth
checked before inference.

``keypoint_ground_truth`` reads the dataset's json when the evaluator is built and prepares what
pycocotools is given, so that problems show up then, not after the whole inference pass:

- errors (``ValueError`` naming the json): images sharing an id; an annotation without "area"
  (pycocotools' OKS scale) or without "keypoints"; an unknown or ambiguous category (see
  ``grouppose.data.keypoint_json.keypoint_category``);
- annotations of categories other than the keypoint one are left out, as the loader leaves them
  out of training: pycocotools would need keypoint fields on them;
- "num_keypoints" (pycocotools ignores people with 0) is set to the number of labeled keypoints
  (v > 0), its COCO definition; missing or disagreeing values are counted in one log line;
- a json without "annotations" is a test split: predictions are written, not evaluated
  (Detectron2's convention);
- when no person has a labeled keypoint (e.g. ``"annotations": []``, a people-free set), keypoint
  AP is undefined: a warning names the json when the evaluator is built, and ``evaluate`` writes
  the predictions and returns NaN for every metric with a warning, instead of pycocotools'
  unexplained NaN (or, with no annotation at all, Detectron2's StopIteration).
"""

import contextlib
import io
import json
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO

from grouppose.data.keypoint_json import check_unique_image_ids, keypoint_category

__all__ = ["COCO_KEYPOINT_METRICS", "KeypointCOCOEvaluator", "keypoint_ground_truth"]

logger = logging.getLogger(__name__)

# Detectron2's COCOEvaluator keypoint metrics, in the order of pycocotools' stats.
COCO_KEYPOINT_METRICS = ("AP", "AP50", "AP75", "APm", "APl")


def _check_evaluation_fields(annotation: Dict, json_file: str) -> None:
    """pycocotools reads "area" (OKS scale, area ranges) and "keypoints" of every annotation."""
    if "area" not in annotation:
        raise ValueError(
            f"{json_file}: annotation id {annotation.get('id')} has no 'area', which COCO "
            "keypoint evaluation needs (CrowdPose-style datasets without area: register "
            "them with evaluator_type='crowdpose')"
        )
    if not annotation.get("keypoints"):
        raise ValueError(
            f"{json_file}: annotation id {annotation.get('id')} of the keypoint category has no "
            "'keypoints', which COCO keypoint evaluation needs"
        )


def _set_num_keypoints(annotations: List[Dict], where: str) -> None:
    """Set each "num_keypoints" to its number of labeled keypoints; log once what changed."""
    missing = disagreeing = 0
    for annotation in annotations:
        labeled = sum(1 for v in annotation["keypoints"][2::3] if v > 0)
        if "num_keypoints" not in annotation:
            missing += 1
        elif annotation["num_keypoints"] != labeled:
            disagreeing += 1
        annotation["num_keypoints"] = labeled
    if missing or disagreeing:
        # A disagreement means a broken converter; a missing field is merely incomplete.
        level = logging.WARNING if disagreeing else logging.INFO
        logger.log(level, f"{where}: 'num_keypoints' missing on {missing} annotations and "
                          f"different from their labeled keypoints on {disagreeing}: evaluating "
                          "with the number of labeled keypoints (v > 0) of each")


def _has_labeled_person(annotations: List[Dict]) -> bool:
    """Whether pycocotools has a person to match: non-crowd, num_keypoints > 0."""
    return any(not a.get("iscrowd", 0) and a["num_keypoints"] > 0 for a in annotations)


def keypoint_ground_truth(json_file: str, dataset_name: str) -> Dict:
    """The json's content as COCO keypoint evaluation should see it (see the module docstring).

    Args:
        json_file: the dataset's COCO-format json.
        dataset_name: the registered name (for messages).

    Returns:
        the parsed json with only the keypoint category and its annotations (each with
        "num_keypoints"); unchanged when it has no "annotations".

    Raises:
        ValueError naming ``json_file`` (and the annotation id) for the errors of the module
        docstring.
    """
    with PathManager.open(json_file) as f:
        content = json.load(f)
    where = f"dataset '{dataset_name}' ({json_file})"
    if "annotations" not in content:
        logger.info(f"{where} has no 'annotations': predictions will be written, not evaluated")
        return content
    check_unique_image_ids(content, json_file)
    category, _ = keypoint_category(content, json_file)
    annotations = [a for a in content["annotations"] if a["category_id"] == category["id"]]
    for annotation in annotations:
        _check_evaluation_fields(annotation, json_file)
    _set_num_keypoints(annotations, where)
    if not _has_labeled_person(annotations):
        logger.warning(f"{where}: no person has a labeled keypoint (a non-crowd annotation with "
                       "v > 0), so keypoint AP cannot be computed: every metric will be NaN")
    return {**content, "annotations": annotations, "categories": [category]}


def _coco_api(ground_truth: Dict) -> COCO:
    coco = COCO()
    coco.dataset = ground_truth
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class KeypointCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator on the "keypoints" task with the official pycocotools, fed
    ``keypoint_ground_truth`` instead of the json as it is, and with an explicit NaN result
    for a ground truth without labeled people.

    Predictions are mapped to the json's category id through the dataset's metadata
    (``thing_dataset_id_to_contiguous_id``, set by ``load_keypoint_json``).
    """

    def __init__(
        self,
        dataset_name: str,
        ground_truth: Dict,
        kpt_oks_sigmas: Sequence[float],
        output_dir: Optional[str] = None,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a registered, loaded dataset with "json_file" metadata.
            ground_truth: ``keypoint_ground_truth`` of that json.
            kpt_oks_sigmas: (K,) OKS sigmas.
            output_dir: where Detectron2 writes the predictions (optional).
            distributed: gather predictions from all workers and evaluate on the main one.
        """
        super().__init__(
            dataset_name, tasks=("keypoints",), distributed=distributed, output_dir=output_dir,
            use_fast_impl=False, kpt_oks_sigmas=list(kpt_oks_sigmas),
        )
        self._coco_api = _coco_api(ground_truth)
        self._where = f"dataset '{dataset_name}' ({self._metadata.json_file})"
        annotations = ground_truth.get("annotations")
        self._no_people = annotations is not None and not _has_labeled_person(annotations)
        if self._no_people:
            # Nothing for pycocotools to match: Detectron2 then only writes the predictions.
            self._do_evaluation = False

    def evaluate(self, img_ids: Optional[List[int]] = None) -> Dict:
        results = super().evaluate(img_ids)
        if not self._no_people or (self._distributed and not comm.is_main_process()):
            return results
        logger.warning(f"{self._where}: no person has a labeled keypoint: keypoint AP is "
                       "undefined, every metric is NaN")
        return OrderedDict(keypoints=dict.fromkeys(COCO_KEYPOINT_METRICS, float("nan")))
