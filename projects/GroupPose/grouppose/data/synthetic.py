"""A generated multi-person keypoint dataset, written in COCO (K = 17) or CrowdPose (K = 14) format.

Images of 0-6 articulated figures over textured backgrounds (see ``synthetic_figures`` for
what is drawn and how visibility is decided), with crowd regions (iscrowd = 1), occluders,
truncation by the image border and empty images. Everything is a function of (seed, image
index), so a dataset is reproducible image by image. Meant for tests and for training a small
model from scratch on a CPU: default images are 256-384 pixels a side, people >= 64 pixels tall.

Layouts:
    COCO:      <root>/annotations.json, <root>/images/<image id>.jpg
    CrowdPose: <root>/crowdpose/json/crowdpose_{train,val,trainval,test}.json,
               <root>/crowdpose/images/ (what ``register_all_crowdpose(<root>)`` reads)
The CrowdPose flavour has no "area" (as CrowdPose), a "crowdIndex" per image and
"num_keypoints" per person, which its evaluation needs.

Python API: ``generate_synthetic_dataset``, ``generate_synthetic_crowdpose``,
``ensure_synthetic_dataset`` (generate if missing) and ``register_synthetic_dataset``; command
line: ``tools/make_synthetic_dataset.py``.
"""

import functools
import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)

from grouppose.data.datasets import (
    CROWDPOSE_FLIP_MAP,
    CROWDPOSE_KEYPOINT_NAMES,
    CROWDPOSE_SKELETON,
    keypoint_metadata,
    register_loader,
)
from grouppose.data.keypoint_json import load_keypoint_json
from grouppose.data.synthetic_figures import POINT_NAMES, RenderedScene, render_scene
from grouppose.modeling.oks import COCO_OKS_SIGMAS, CROWDPOSE_OKS_SIGMAS

__all__ = [
    "DEFAULT_SPLITS",
    "ensure_synthetic_dataset",
    "generate_synthetic_crowdpose",
    "generate_synthetic_dataset",
    "register_synthetic_dataset",
    "synthetic_metadata",
]

GENERATOR_VERSION = 2
DEFAULT_IMAGE_SIZE = (256, 384)  # min, max of each side
# Registered by ``import grouppose`` for the tiny CPU config (configs/Synthetic): name ->
# (folder under $DETECTRON2_DATASETS, images, seed, image size). Drawn at about the size that
# config reads (short side ~160 px) rather than down-scaled to it: people keep their >= 64 px at
# the model's input, as OKS tolerances are a few pixels for people that small.
DEFAULT_SPLITS = {
    "synthetic_train": ("synthetic_pose_small/train", 2000, 0, (160, 240)),
    "synthetic_val": ("synthetic_pose_small/val", 200, 1, (160, 240)),
}
_COCO_SKELETON = tuple((a, b) for a, b, _ in KEYPOINT_CONNECTION_RULES)
_FORMATS = {
    "coco": (tuple(COCO_PERSON_KEYPOINT_NAMES), COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_OKS_SIGMAS,
             _COCO_SKELETON),
    "crowdpose": (CROWDPOSE_KEYPOINT_NAMES, CROWDPOSE_FLIP_MAP, CROWDPOSE_OKS_SIGMAS,
                  CROWDPOSE_SKELETON),
}
# CrowdPose layout: split -> the fraction of the images it covers (trainval = train + val).
_CROWDPOSE_SPLITS = {"train": (0.0, 0.5), "val": (0.5, 0.75), "trainval": (0.0, 0.75),
                     "test": (0.75, 1.0)}
_JPEG_QUALITY = 92


def synthetic_metadata(keypoint_format: str = "coco") -> Dict:
    """Detectron2 keypoint metadata of the generated data ("coco" or "crowdpose" keypoints)."""
    return keypoint_metadata(*_keypoint_format(keypoint_format))


def _keypoint_format(keypoint_format: str) -> Tuple:
    if keypoint_format not in _FORMATS:
        raise ValueError(f"keypoint_format must be one of {sorted(_FORMATS)}, got "
                         f"{keypoint_format!r}")
    return _FORMATS[keypoint_format]


def _crowd_index(keypoints: np.ndarray, boxes: Sequence[Sequence[int]]) -> float:
    """CrowdPose's crowd index: mean over people of (other people's labeled keypoints inside
    the person's box) / (the person's own labeled keypoints).

    Args:
        keypoints: (n, K, 3) x, y, v; boxes: n (x, y, w, h).
    """
    ratios = []
    for i, (x, y, w, h) in enumerate(boxes):
        own = int((keypoints[i, :, 2] > 0).sum())
        if own == 0:
            continue
        others = np.delete(keypoints, i, axis=0).reshape(-1, 3)
        others = others[others[:, 2] > 0]
        inside = ((others[:, 0] >= x) & (others[:, 0] <= x + w)
                  & (others[:, 1] >= y) & (others[:, 1] <= y + h))
        ratios.append(inside.sum() / own)
    return float(np.mean(ratios)) if ratios else 0.0


def _scene_annotations(
    scene: RenderedScene, image_id: int, first_annotation_id: int, keypoint_format: str
) -> Tuple[List[Dict], float]:
    """COCO annotations of a scene's people and crowd regions, and its crowd index."""
    names = _keypoint_format(keypoint_format)[0]
    columns = [POINT_NAMES.index(name) for name in names]
    annotations, people_keypoints = [], []
    for person in scene.people:
        keypoints = np.concatenate(
            [person.points[columns], person.visibility[columns, None]], axis=1
        )
        people_keypoints.append(keypoints)
        annotation = {
            "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": list(person.bbox), "num_keypoints": int((keypoints[:, 2] > 0).sum()),
            "keypoints": keypoints.reshape(-1).tolist(),
        }
        if keypoint_format == "coco":  # CrowdPose annotations have no area
            annotation["area"] = person.area
        annotations.append(annotation)
    for x, y, w, h in scene.crowd_boxes:
        annotation = {
            "image_id": image_id, "category_id": 1, "iscrowd": 1, "bbox": [x, y, w, h],
            "num_keypoints": 0, "keypoints": [0] * (3 * len(names)),
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        }
        if keypoint_format == "coco":
            annotation["area"] = w * h
        annotations.append(annotation)
    for offset, annotation in enumerate(annotations):
        annotation["id"] = first_annotation_id + offset
    keypoints = (np.stack(people_keypoints) if people_keypoints
                 else np.zeros((0, len(names), 3), dtype=np.int64))
    return annotations, _crowd_index(keypoints, [p.bbox for p in scene.people])


def _render_images(
    image_root: str, num_images: int, seed: int, image_size: Tuple[int, int],
    keypoint_format: str,
) -> Tuple[List[Dict], List[Dict]]:
    """Render and write images 1..num_images; returns their COCO "images" and "annotations"."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    low, high = image_size
    if not 96 <= low <= high:
        raise ValueError(f"image_size must be (min, max) with 96 <= min <= max, got {image_size}")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        rng = np.random.default_rng([seed, image_id])
        width, height = (int(v) for v in rng.integers(low, high + 1, size=2))
        scene = render_scene(rng, width, height)
        file_name = f"{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(image_root, file_name), scene.image,
                    [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        scene_annotations, crowd_index = _scene_annotations(
            scene, image_id, len(annotations) + 1, keypoint_format
        )
        image = {"id": image_id, "file_name": file_name, "height": height, "width": width}
        if keypoint_format == "crowdpose":
            image["crowdIndex"] = round(crowd_index, 4)
        images.append(image)
        annotations.extend(scene_annotations)
    return images, annotations


def _coco_json(images: List[Dict], annotations: List[Dict], keypoint_format: str,
               info: Dict) -> Dict:
    names, _, _, skeleton = _keypoint_format(keypoint_format)
    category = {
        "id": 1, "name": "person", "supercategory": "person", "keypoints": list(names),
        "skeleton": [[names.index(a) + 1, names.index(b) + 1] for a, b in skeleton],
    }
    return {"info": info, "images": images, "annotations": annotations,
            "categories": [category]}


def _write_json(path: str, content: Dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f)


def _info(num_images: int, seed: int, image_size: Tuple[int, int], keypoint_format: str) -> Dict:
    return {"description": "GroupPose-D2 synthetic keypoints", "version": GENERATOR_VERSION,
            "num_images": num_images, "seed": seed, "image_size": list(image_size),
            "keypoint_format": keypoint_format}


def generate_synthetic_dataset(
    root: str,
    num_images: int,
    seed: int = 0,
    image_size: Tuple[int, int] = DEFAULT_IMAGE_SIZE,
    keypoint_format: str = "coco",
) -> str:
    """Write a generated dataset in COCO layout: <root>/annotations.json and <root>/images/.

    Args:
        root: output folder (created; existing files with the same names are overwritten).
        num_images: how many images (ids 1..num_images).
        seed: the dataset's seed; image i is a function of (seed, i) only.
        image_size: (min, max) of each image side in pixels.
        keypoint_format: "coco" (K = 17, with "area") or "crowdpose" (K = 14, no "area",
            "crowdIndex" per image).

    Returns:
        the json file's path.
    """
    images, annotations = _render_images(
        os.path.join(root, "images"), num_images, seed, tuple(image_size), keypoint_format
    )
    json_file = os.path.join(root, "annotations.json")
    info = _info(num_images, seed, image_size, keypoint_format)
    _write_json(json_file, _coco_json(images, annotations, keypoint_format, info))
    return json_file


def generate_synthetic_crowdpose(
    root: str, num_images: int, seed: int = 0, image_size: Tuple[int, int] = DEFAULT_IMAGE_SIZE
) -> Dict[str, str]:
    """Write a generated dataset in the CrowdPose release layout (see the module docstring).

    Images 1..num_images are split 50% train, 25% val, 25% test; trainval = train + val.

    Returns:
        split name -> json file path.
    """
    images, annotations = _render_images(
        os.path.join(root, "crowdpose", "images"), num_images, seed, tuple(image_size),
        "crowdpose",
    )
    info = _info(num_images, seed, image_size, "crowdpose")
    json_files = {}
    for split, (start, stop) in _CROWDPOSE_SPLITS.items():
        ids = set(range(int(start * num_images) + 1, int(stop * num_images) + 1))
        split_images = [image for image in images if image["id"] in ids]
        split_annotations = [a for a in annotations if a["image_id"] in ids]
        json_files[split] = os.path.join(root, "crowdpose", "json", f"crowdpose_{split}.json")
        _write_json(json_files[split],
                    _coco_json(split_images, split_annotations, "crowdpose", info))
    return json_files


def ensure_synthetic_dataset(
    root: str, num_images: int, seed: int = 0, image_size: Tuple[int, int] = DEFAULT_IMAGE_SIZE
) -> str:
    """Generate a COCO-layout dataset at ``root`` unless it is already there.

    Safe when several processes call it at once: each generates into a private folder and the
    first to finish moves it into place.

    Returns:
        the json file's path.

    Raises:
        ValueError if ``root`` holds a generated dataset with other parameters.
    """
    json_file = os.path.join(root, "annotations.json")
    wanted = _info(num_images, seed, image_size, "coco")
    if not os.path.isfile(json_file):
        staging = f"{os.path.normpath(root)}.tmp-{os.getpid()}"
        generate_synthetic_dataset(staging, num_images, seed, image_size)
        os.makedirs(os.path.dirname(os.path.normpath(root)) or ".", exist_ok=True)
        try:
            os.rename(staging, root)
        except OSError:  # another process was first
            shutil.rmtree(staging, ignore_errors=True)
    with open(json_file) as f:
        found = json.load(f).get("info", {})
    if found != wanted:
        raise ValueError(
            f"{json_file} was generated with {found}, not {wanted}: delete {root} or use "
            "another folder"
        )
    return json_file


def _load_generated(
    root: str, name: str, num_images: Optional[int], seed: int, image_size: Tuple[int, int]
) -> List[Dict]:
    if num_images is not None:
        ensure_synthetic_dataset(root, num_images, seed, image_size)
    json_file = os.path.join(root, "annotations.json")
    return load_keypoint_json(json_file, os.path.join(root, "images"), name,
                              len(COCO_PERSON_KEYPOINT_NAMES))


def register_synthetic_dataset(
    name: str,
    root: str,
    num_images: Optional[int] = None,
    seed: int = 0,
    image_size: Tuple[int, int] = DEFAULT_IMAGE_SIZE,
) -> None:
    """Register the COCO-layout generated dataset at ``root`` (K = 17, COCO metadata).

    With ``num_images`` the dataset is generated on first load if missing (see
    ``ensure_synthetic_dataset``); without, it must exist.
    """
    loader = functools.partial(_load_generated, root, name, num_images, seed, tuple(image_size))
    register_loader(name, loader, synthetic_metadata("coco"), os.path.join(root,
                    "annotations.json"), os.path.join(root, "images"), "coco")
