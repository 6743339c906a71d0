"""The official implementation's reference fixtures (../shared/reference): their model
configuration, tensors and batches."""

from pathlib import Path
from typing import Dict, List

import torch
from detectron2.structures import Instances, Keypoints

from grouppose.config import get_grouppose_cfg
from grouppose.modeling.postprocess import PIXEL_CENTER_OFFSET
from helpers.tiny_grouppose import BASE_CONFIG


def reference_cfg(**group_pose):
    """The reference fixtures' configuration (see the reference README), CPU."""
    cfg = get_grouppose_cfg(str(BASE_CONFIG))
    cfg.MODEL.GROUP_POSE.ENC_LAYERS = 2
    cfg.MODEL.GROUP_POSE.DEC_LAYERS = 2
    cfg.MODEL.GROUP_POSE.NUM_INSTANCES = 20
    cfg.MODEL.GROUP_POSE.TEST_TOPK = 20
    for key, value in group_pose.items():
        cfg.MODEL.GROUP_POSE[key] = value
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def load_reference(reference_dir: Path, name: str):
    return torch.load(reference_dir / f"{name}.pt", map_location="cpu")


def reference_batch(reference: Dict, with_people: bool) -> List[Dict]:
    """The reference images (float RGB 0..255) as Detectron2 inputs, optionally with people
    (keypoints in Detectron2's continuous frame, as its COCO loader gives them)."""
    batch = []
    for image, target in zip(reference["inputs"]["raw_rgb_0_255"], reference["targets"]):
        item = {"image": image.clone()}
        if with_people:
            instances = Instances(tuple(image.shape[-2:]))
            keypoints = target["keypoints_pixels_xyv"].clone()
            keypoints[..., :2] += PIXEL_CENTER_OFFSET
            instances.gt_keypoints = Keypoints(keypoints)
            instances.gt_area = target["area_pixels"].clone()
            item["instances"] = instances
        batch.append(item)
    return batch
