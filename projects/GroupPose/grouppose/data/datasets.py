"""Keypoint dataset registration: any COCO-format keypoint json, CrowdPose, and COCO.

Every dataset registered here loads through ``load_keypoint_json`` (keeps each person's
"area", checks annotations) and carries the metadata Group Pose and its evaluators need:
``keypoint_names``, ``keypoint_flip_map``, ``keypoint_connection_rules``, ``kpt_oks_sigmas``,
``json_file``, ``image_root`` and ``evaluator_type`` ("coco" or "crowdpose").
"""

import functools
import os
from typing import Callable, Dict, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from grouppose.data.keypoint_json import load_keypoint_json
from grouppose.modeling.oks import COCO_OKS_SIGMAS, CROWDPOSE_OKS_SIGMAS, as_sigmas

__all__ = [
    "CROWDPOSE_FLIP_MAP",
    "CROWDPOSE_KEYPOINT_NAMES",
    "CROWDPOSE_SKELETON",
    "keypoint_metadata",
    "register_all_crowdpose",
    "register_coco_keypoint_datasets",
    "register_keypoint_dataset",
    "register_loader",
]

CROWDPOSE_KEYPOINT_NAMES = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "head", "neck",
)
CROWDPOSE_FLIP_MAP = tuple(
    (f"left_{part}", f"right_{part}")
    for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")
)
CROWDPOSE_SKELETON = (
    ("head", "neck"),
    ("neck", "left_shoulder"), ("neck", "right_shoulder"),
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"), ("left_hip", "right_hip"),
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
)
# name -> json file, relative to the dataset root; images are in crowdpose/images for all.
_CROWDPOSE_SPLITS = {
    f"crowdpose_{split}": f"crowdpose/json/crowdpose_{split}.json"
    for split in ("train", "val", "trainval", "test")
}
_CROWDPOSE_IMAGE_ROOT = "crowdpose/images"

# Visualizer colours (RGB) of skeleton edges: by the side of the body they are on.
_LEFT_COLOR, _RIGHT_COLOR, _CENTER_COLOR = (255, 128, 0), (0, 128, 255), (0, 200, 0)


def _edge_color(name_a: str, name_b: str) -> Tuple[int, int, int]:
    names = name_a + name_b
    if "left" in names and "right" not in names:
        return _LEFT_COLOR
    if "right" in names and "left" not in names:
        return _RIGHT_COLOR
    return _CENTER_COLOR


def keypoint_metadata(
    keypoint_names: Sequence[str],
    flip_map: Sequence[Tuple[str, str]],
    oks_sigmas: Sequence[float],
    skeleton: Sequence[Tuple[str, str]],
) -> Dict:
    """Validated Detectron2 keypoint metadata.

    Args:
        keypoint_names: the K keypoint names, in the json's keypoint order.
        flip_map: (left name, right name) pairs swapped by a horizontal flip.
        oks_sigmas: K positive per-keypoint OKS sigmas (COCO's already divided by 10).
        skeleton: (name, name) pairs drawn as lines by the Visualizer.

    Returns:
        dict with ``keypoint_names``, ``keypoint_flip_map``, ``keypoint_connection_rules`` and
        ``kpt_oks_sigmas``. (``thing_classes`` comes from the json's categories when loading.)

    Raises:
        ValueError naming the argument that does not fit ``keypoint_names``.
    """
    names = tuple(keypoint_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"keypoint_names must be non-empty and unique, got {names}")
    known = set(names)
    for argument, pairs in (("flip_map", flip_map), ("skeleton", skeleton)):
        for pair in pairs:
            if len(pair) != 2 or not set(pair) <= known:
                raise ValueError(
                    f"{argument} entry {tuple(pair)} must be two names from keypoint_names"
                )
    flipped = [name for pair in flip_map for name in pair]
    if len(set(flipped)) != len(flipped):
        raise ValueError(f"flip_map names a keypoint twice: {tuple(flip_map)}")
    sigmas = tuple(float(s) for s in oks_sigmas)
    as_sigmas(sigmas)  # validates: positive numbers
    if len(sigmas) != len(names):
        raise ValueError(
            f"oks_sigmas has {len(sigmas)} values but keypoint_names has {len(names)}"
        )
    return {
        "keypoint_names": names,
        "keypoint_flip_map": tuple((a, b) for a, b in flip_map),
        "keypoint_connection_rules": [(a, b, _edge_color(a, b)) for a, b in skeleton],
        "kpt_oks_sigmas": sigmas,
    }


def register_loader(
    name: str, loader: Callable[[], List[Dict]], metadata: Dict, json_file: str, image_root: str,
    evaluator_type: str,
) -> None:
    """Register ``loader`` under ``name`` with ``metadata`` (from ``keypoint_metadata``)."""
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type=evaluator_type, **metadata
    )


def register_keypoint_dataset(
    name: str,
    json_file: str,
    image_root: str,
    keypoint_names: Sequence[str],
    flip_map: Sequence[Tuple[str, str]],
    oks_sigmas: Sequence[float],
    skeleton: Sequence[Tuple[str, str]],
    evaluator_type: str = "coco",
) -> None:
    """Register a COCO-format keypoint dataset with any number of keypoints K.

    Loading keeps each person's "area" (box area when missing) and checks the annotations (see
    ``grouppose.data.keypoint_json``). The metadata gives training the flip map and OKS sigmas,
    and evaluation (``grouppose.evaluation.build_keypoint_evaluator``) the sigmas: custom K is
    evaluated by pycocotools with these sigmas, ``evaluator_type="crowdpose"`` by the CrowdPose
    protocol (the json then needs CrowdPose's "crowdIndex" per image and "num_keypoints").

    Example, a 5-keypoint hand-and-head dataset::

        from grouppose.data import register_keypoint_dataset

        register_keypoint_dataset(
            "my_poses_train",
            json_file="datasets/my_poses/annotations/train.json",
            image_root="datasets/my_poses/images",
            keypoint_names=["head", "left_hand", "right_hand", "left_foot", "right_foot"],
            flip_map=[("left_hand", "right_hand"), ("left_foot", "right_foot")],
            oks_sigmas=[0.079, 0.062, 0.062, 0.089, 0.089],
            skeleton=[("head", "left_hand"), ("head", "right_hand"),
                      ("head", "left_foot"), ("head", "right_foot")],
        )
        # then: cfg.DATASETS.TRAIN = ("my_poses_train",); cfg.MODEL.GROUP_POSE.NUM_KEYPOINTS = 5

    Args:
        name: dataset name for ``cfg.DATASETS.TRAIN`` / ``TEST``.
        json_file: COCO-format json: images, annotations with ``keypoints`` (3K numbers each),
            ``bbox``, ``iscrowd``, ``category_id`` and, optionally, ``area``.
        image_root: folder the images' ``file_name`` values are relative to.
        keypoint_names: the K names, in the json's order.
        flip_map: (left, right) name pairs swapped by horizontal-flip augmentation.
        oks_sigmas: K per-keypoint OKS sigmas (as in pycocotools, e.g. COCO's nose 0.026).
        skeleton: (name, name) pairs for visualisation.
        evaluator_type: "coco" (pycocotools keypoint AP) or "crowdpose" (xtcocotools).

    Raises:
        ValueError naming the argument that is inconsistent.
    """
    if evaluator_type not in ("coco", "crowdpose"):
        raise ValueError(f"evaluator_type must be 'coco' or 'crowdpose', got {evaluator_type!r}")
    metadata = keypoint_metadata(keypoint_names, flip_map, oks_sigmas, skeleton)
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    loader = functools.partial(
        load_keypoint_json, json_file, image_root, name, len(metadata["keypoint_names"])
    )
    register_loader(name, loader, metadata, json_file, image_root, evaluator_type)


def register_all_crowdpose(root: str) -> None:
    """Register crowdpose_{train,val,trainval,test} under ``root`` in the CrowdPose layout.

    ``root``/crowdpose/json/crowdpose_<split>.json and ``root``/crowdpose/images/.
    """
    for name, json_file in _CROWDPOSE_SPLITS.items():
        register_keypoint_dataset(
            name,
            os.path.join(root, json_file),
            os.path.join(root, _CROWDPOSE_IMAGE_ROOT),
            CROWDPOSE_KEYPOINT_NAMES,
            CROWDPOSE_FLIP_MAP,
            CROWDPOSE_OKS_SIGMAS,
            CROWDPOSE_SKELETON,
            evaluator_type="crowdpose",
        )


def register_coco_keypoint_datasets() -> None:
    """Make Detectron2's built-in ``keypoints_coco_*`` datasets load through
    ``load_keypoint_json`` (keeps "area") and add the COCO ``kpt_oks_sigmas`` to their metadata.

    Their paths, keypoint names, flip map and connection rules stay Detectron2's.
    """
    for name in DatasetCatalog.list():
        if not name.startswith("keypoints_coco_"):
            continue
        metadata = MetadataCatalog.get(name)
        loader = functools.partial(
            load_keypoint_json,
            metadata.json_file,
            metadata.image_root,
            name,
            len(metadata.keypoint_names),
        )
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        metadata.set(kpt_oks_sigmas=tuple(COCO_OKS_SIGMAS))
