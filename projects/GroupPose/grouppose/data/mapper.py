"""GroupPoseDatasetMapper: a dataset dict -> the model's input (image tensor + person targets).

Geometry goes through Detectron2: ``transform_instance_annotations`` moves boxes and keypoints
(``apply_coords``), marks keypoints that leave the image unlabeled (v = 0 at (0, 0)) and, after a
horizontal flip, swaps left/right keypoints by the flip map. On top of that this mapper
- never makes crowd (iscrowd = 1) annotations targets;
- drops people left without a labeled keypoint (e.g. cropped away); Detectron2 keeps them;
- adds ``gt_area``: the annotation's "area" (or box area) times the area scale of the
  transforms (resizes scale it, flips and crops do not), in pixels of the output image.
"""

import copy
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances, Keypoints

from grouppose.data.augmentation import build_augmentation
from grouppose.data.keypoint_json import person_area
from grouppose.image_io import read_image

__all__ = ["GroupPoseDatasetMapper", "area_scale"]

logger = logging.getLogger(__name__)


def area_scale(transforms: T.TransformList) -> float:
    """How much ``transforms`` scale areas: |det| of their linear part.

    Exact for the affine transforms used here (resize, flip, crop); computed from where
    ``apply_coords`` sends the unit vectors.
    """
    probe = transforms.apply_coords(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    ex, ey = probe[1] - probe[0], probe[2] - probe[0]
    return float(abs(ex[0] * ey[1] - ex[1] * ey[0]))


class GroupPoseDatasetMapper:
    """Read, augment and convert one dataset dict for Group Pose.

    Output dict: the input's fields (minus "annotations") plus "image" (3, H, W) uint8 tensor
    in ``image_format`` and, in training, "instances" (image_size (H, W)) with
    ``gt_keypoints`` (Keypoints, (n, K, 3) pixels of the output image, v in {0, 1, 2}; at
    least one v > 0 per person), ``gt_area`` (n,) float pixels, ``gt_boxes`` (n, 4) XYXY
    and ``gt_classes`` (n,) int64.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: Sequence[Union[T.Augmentation, T.Transform]],
        image_format: str,
        num_keypoints: Optional[int] = None,
        keypoint_hflip_indices: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            is_train: build training targets (else drop the annotations).
            augmentations: applied in order (see ``build_augmentation``).
            image_format: "RGB" or "BGR".
            num_keypoints: K; needed in training to give an image without people a (0, K, 3)
                ``gt_keypoints``.
            keypoint_hflip_indices: (K,) index of each keypoint's mirror partner (see
                ``detectron2.data.detection_utils.create_keypoint_hflip_indices``); needed when
                the augmentations flip.
        """
        if is_train and num_keypoints is None:
            raise ValueError("num_keypoints is required for training")
        if (
            keypoint_hflip_indices is not None
            and num_keypoints is not None
            and len(keypoint_hflip_indices) != num_keypoints
        ):
            raise ValueError(
                f"keypoint_hflip_indices has {len(keypoint_hflip_indices)} entries but "
                f"num_keypoints is {num_keypoints}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.num_keypoints = num_keypoints
        self.keypoint_hflip_indices = (
            None if keypoint_hflip_indices is None else np.asarray(keypoint_hflip_indices)
        )
        mode = "training" if is_train else "inference"
        logger.info(f"[GroupPoseDatasetMapper] augmentations in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ret = {
            "is_train": is_train,
            "augmentations": build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
        }
        if is_train:
            names = cfg.DATASETS.TRAIN
            if not len(names):
                raise ValueError("DATASETS.TRAIN is empty: the training mapper needs its metadata")
            ret["num_keypoints"] = len(MetadataCatalog.get(names[0]).keypoint_names)
            ret["keypoint_hflip_indices"] = utils.create_keypoint_hflip_indices(names)
        return ret

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict: one image in Detectron2's dataset format (see ``load_keypoint_json``).

        Returns:
            the model's input dict (see the class docstring).
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annotations = dataset_dict.pop("annotations", None)
        if self.is_train and annotations is not None:
            dataset_dict["instances"] = self._targets(
                annotations, transforms, image.shape[:2], dataset_dict["file_name"]
            )
        return dataset_dict

    @staticmethod
    def _areas(people: List[Dict], scale: float, file_name: str) -> List[float]:
        areas = []
        for person in people:
            area = person_area(person)
            if area is None:
                raise ValueError(
                    f"annotation id {person.get('id')} of '{file_name}' has neither a positive "
                    "area nor a positive box (grouppose.data.load_keypoint_json drops such people)"
                )
            areas.append(area * scale)
        return areas

    def _targets(
        self,
        annotations: List[Dict],
        transforms: T.TransformList,
        image_size: Tuple[int, int],
        file_name: str,
    ) -> Instances:
        people = [a for a in annotations if not a.get("iscrowd", 0)]
        areas = self._areas(people, area_scale(transforms), file_name)
        for person in people:
            person.pop("segmentation", None)  # masks are not used: do not transform them
        people = [
            utils.transform_instance_annotations(
                person, transforms, image_size, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for person in people
        ]
        # One array, not Detectron2's per-person list (slow, and shapeless when empty).
        keypoints = (np.stack([person.pop("keypoints") for person in people]) if people
                     else np.zeros((0, self.num_keypoints, 3)))
        instances = utils.annotations_to_instances(people, image_size)
        instances.gt_keypoints = Keypoints(torch.as_tensor(keypoints, dtype=torch.float32))
        instances.gt_area = torch.tensor(areas, dtype=torch.float32)
        labeled = (instances.gt_keypoints.tensor[:, :, 2] > 0).any(dim=1)
        return instances[labeled]
