"""Small hand-written keypoint datasets and temporary registrations for the data and evaluation
tests (test_datasets, test_mapper, test_bad_input, test_evaluation, test_synthetic)."""

import json
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES
from detectron2.structures import Boxes, Instances

COCO_NAMES = tuple(COCO_PERSON_KEYPOINT_NAMES)
K = len(COCO_NAMES)


def unique_name(prefix: str) -> str:
    """A dataset name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def unregister(name: str) -> None:
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def write_image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A random 8-bit BGR image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    return path


def keypoints(points: Dict[int, Sequence[float]], num_keypoints: int = K) -> List[float]:
    """A flat COCO keypoint list: ``points`` maps keypoint index -> (x, y, v); others 0."""
    flat = np.zeros((num_keypoints, 3))
    for index, point in points.items():
        flat[index] = point
    return flat.reshape(-1).tolist()


def annotation(
    annotation_id: int, image_id: int, kpts: List[float], bbox: Sequence[float],
    area: Optional[float] = None, iscrowd: int = 0,
) -> Dict:
    ann = {"id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": iscrowd,
           "bbox": list(bbox), "keypoints": kpts,
           "num_keypoints": int((np.asarray(kpts).reshape(-1, 3)[:, 2] > 0).sum())}
    if area is not None:
        ann["area"] = area
    return ann


def write_json(
    path: Path, images: List[Dict], annotations: List[Dict], names: Sequence[str] = COCO_NAMES
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(names),
                "skeleton": []}
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [category]}))
    return path


def gt_predictions(
    json_file: Path, shifts: Optional[Dict[int, Sequence[float]]] = None,
    scores: Optional[Dict[int, float]] = None,
):
    """The ground truth of a json as model outputs, for evaluator.process(inputs, outputs).

    Every person with a labeled keypoint becomes a prediction with its keypoints shifted by
    ``shifts[annotation id]`` (pixels) and score ``scores[annotation id]`` (default 1); the
    keypoint scores are 1, boxes are the annotation boxes, coordinates are Detectron2's
    (COCO pixel index + 0.5).

    Returns:
        inputs, outputs: lists over the json's images.
    """
    data = json.loads(Path(json_file).read_text())
    inputs, outputs = [], []
    for image in data["images"]:
        people = [a for a in data["annotations"] if a["image_id"] == image["id"]
                  and not a["iscrowd"] and a["num_keypoints"] > 0]
        points, boxes, person_scores = [], [], []
        for person in people:
            xyv = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
            xy = xyv[:, :2] + 0.5 + np.asarray((shifts or {}).get(person["id"], (0.0, 0.0)))
            points.append(np.concatenate([xy, np.ones((len(xy), 1))], axis=1))
            x, y, w, h = person["bbox"]
            boxes.append([x, y, x + w, y + h])
            person_scores.append((scores or {}).get(person["id"], 1.0))
        instances = Instances((image["height"], image["width"]))
        num_keypoints = len(data["categories"][0]["keypoints"])
        instances.pred_keypoints = torch.tensor(
            np.asarray(points).reshape(-1, num_keypoints, 3), dtype=torch.float32
        )
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor(person_scores, dtype=torch.float32)
        instances.pred_classes = torch.zeros(len(people), dtype=torch.int64)
        inputs.append({"image_id": image["id"]})
        outputs.append({"instances": instances})
    return inputs, outputs


def coco_results(inputs, outputs) -> List[Dict]:
    """What an evaluator should hand the COCO API for ``gt_predictions`` output: keypoints
    back in pixel indices, boxes XYWH, dataset category id 1 (computed independently of
    Detectron2's ``instances_to_coco_json``)."""
    results = []
    for inp, out in zip(inputs, outputs):
        instances = out["instances"]
        for points, box, score in zip(instances.pred_keypoints.double().numpy(),
                                      instances.pred_boxes.tensor.double().numpy(),
                                      instances.scores.double().numpy()):
            xyv = points.copy()
            xyv[:, :2] -= 0.5
            results.append({
                "image_id": inp["image_id"], "category_id": 1, "score": float(score),
                "keypoints": xyv.reshape(-1).tolist(),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            })
    return results
