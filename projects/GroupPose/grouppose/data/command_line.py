"""COCO-format keypoint datasets named on the command line (train_net.py, demo.py).

    python train_net.py --config-file CONFIG \
        --dataset my_train=ann/train.json:images/ --dataset my_val=ann/val.json:images/ \
        --dataset-meta my_poses.yaml \
        DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)" MODEL.GROUP_POSE.NUM_KEYPOINTS 5

Each ``--dataset NAME=JSON:IMAGE_ROOT`` registers NAME (``register_keypoint_dataset``) before the
config is used. The keypoint names, their order, K and the skeleton come from the json's keypoint
category (``keypoints``, ``skeleton``); the flip map and OKS sigmas, which a COCO json does not
hold, from the optional ``--dataset-meta`` file (yaml or json, for every ``--dataset``)::

    flip_map: [[left_hand, right_hand], [left_foot, right_foot]]  # pairs swapped by a flip
    oks_sigmas: [0.079, 0.062, 0.062, 0.089, 0.089]               # K values
    skeleton: [[head, left_hand]]          # optional: replaces the json's
    keypoint_names: [head, left_hand, ...] # optional: checked against the json's
    evaluator_type: coco                   # optional: coco (default) or crowdpose

Without the file, a json with COCO's 17 (or CrowdPose's 14) keypoint names gets their flip map,
and K = 17 (14) gets their sigmas; any other dataset is an error saying what to add.
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from detectron2.data import DatasetCatalog
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
)
from detectron2.utils.file_io import PathManager

from grouppose.data.datasets import (
    CROWDPOSE_FLIP_MAP,
    CROWDPOSE_KEYPOINT_NAMES,
    register_keypoint_dataset,
)
from grouppose.data.keypoint_json import check_keypoint_order, keypoint_category
from grouppose.modeling.oks import default_oks_sigmas

__all__ = ["add_dataset_arguments", "parse_dataset_spec", "register_command_line_datasets"]

_META_KEYS = ("keypoint_names", "flip_map", "oks_sigmas", "skeleton", "evaluator_type")
# Keypoint names whose standard flip map is the default.
_KNOWN_FLIP_MAPS = {
    tuple(COCO_PERSON_KEYPOINT_NAMES): tuple(COCO_PERSON_KEYPOINT_FLIP_MAP),
    tuple(CROWDPOSE_KEYPOINT_NAMES): CROWDPOSE_FLIP_MAP,
}
_JSON_SEPARATOR = ".json:"


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataset`` (repeated) and ``--dataset-meta``."""
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME=JSON:IMAGE_ROOT",
        help="register a COCO-format keypoint json as dataset NAME (use it in DATASETS.TRAIN / "
        "DATASETS.TEST); keypoint names and skeleton come from the json; repeat for several",
    )
    parser.add_argument(
        "--dataset-meta", metavar="FILE", default="",
        help="yaml/json with the flip_map and oks_sigmas of the --dataset datasets (optional "
        "for COCO's 17 and CrowdPose's 14 keypoints); see grouppose.data.command_line",
    )


def parse_dataset_spec(spec: str) -> Tuple[str, str, str]:
    """``NAME=JSON:IMAGE_ROOT`` -> (name, json file, image root); ValueError naming it."""
    name, _, files = spec.partition("=")
    split = files.find(_JSON_SEPARATOR)
    if not name or split < 0 or not files[split + len(_JSON_SEPARATOR):]:
        raise ValueError(
            f"--dataset '{spec}' must be NAME=JSON:IMAGE_ROOT, e.g. "
            "my_train=annotations/train.json:images/ (the json file name ends with .json)"
        )
    return name, files[: split + len(".json")], files[split + len(_JSON_SEPARATOR):]


def read_dataset_meta(path: str) -> Dict:
    """The ``--dataset-meta`` file's keys (see the module docstring)."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise ValueError(f"--dataset-meta file not found: '{path}'")
    with open(path) as f:
        try:
            meta = yaml.safe_load(f) or {}  # yaml also reads json
        except yaml.YAMLError as e:
            raise ValueError(f"--dataset-meta '{path}' is not yaml or json: {e}") from None
    unknown = sorted(set(meta) - set(_META_KEYS)) if isinstance(meta, dict) else None
    if unknown is None or unknown:
        raise ValueError(
            f"--dataset-meta '{path}' must be a mapping with keys from {list(_META_KEYS)}"
            + (f"; unknown: {unknown}" if unknown else "")
        )
    return meta


def _json_keypoints(json_file: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The keypoint names and the skeleton (as name pairs) of the json's keypoint category."""
    if not os.path.isfile(json_file):
        raise ValueError(f"--dataset json file not found: '{json_file}'")
    with PathManager.open(json_file) as f:
        category, _ = keypoint_category(json.load(f), json_file)
    names = list(category.get("keypoints") or [])
    skeleton = []
    for edge in category.get("skeleton") or []:
        if len(edge) != 2 or not all(isinstance(i, int) and 1 <= i <= len(names) for i in edge):
            raise ValueError(
                f"{json_file}: skeleton edge {edge} of category '{category.get('name')}' must be "
                f"two keypoint numbers in 1..{len(names)}"
            )
        skeleton.append((names[edge[0] - 1], names[edge[1] - 1]))
    return names, skeleton


def _standard(value, default, what: str, where: str, meta_file: str):
    """``value`` from the meta file, else ``default``, else an error saying what to add."""
    if value is not None:
        return value
    if default is not None:
        return default
    source = f"--dataset-meta '{meta_file}'" if meta_file else "a --dataset-meta file"
    raise ValueError(f"{where}: give its {what} in {source} (see grouppose.data.command_line)")


def _register(name: str, json_file: str, image_root: str, meta: Dict, meta_file: str) -> None:
    if name in DatasetCatalog.list():
        raise ValueError(f"--dataset '{name}': a dataset of that name is already registered; "
                         "choose another name")
    names, skeleton = _json_keypoints(json_file)
    given = meta.get("keypoint_names")
    if given is not None:
        check_keypoint_order(names, given, json_file)
        names = names or list(given)
    where = f"--dataset '{name}' ({json_file}, K={len(names)})"
    if not names:
        raise ValueError(f"{json_file}: its keypoint category lists no 'keypoints' names: add "
                         "them, or give keypoint_names in --dataset-meta")
    try:
        sigmas = default_oks_sigmas(len(names)).tolist()
    except ValueError:
        sigmas = None
    flip_map = _standard(meta.get("flip_map"), _KNOWN_FLIP_MAPS.get(tuple(names)),
                         "flip_map (pairs of keypoint names swapped by a flip; [] for none)",
                         where, meta_file)
    sigmas = _standard(meta.get("oks_sigmas"), sigmas, f"oks_sigmas ({len(names)} values)",
                       where, meta_file)
    try:
        register_keypoint_dataset(
            name, json_file, image_root, names, flip_map, sigmas,
            skeleton=meta.get("skeleton", skeleton),
            evaluator_type=meta.get("evaluator_type", "coco"),
        )
    except ValueError as e:  # a meta entry that does not fit the json's keypoints
        raise ValueError(f"{where}, --dataset-meta '{meta_file}': {e}") from None


def register_command_line_datasets(specs: Sequence[str], meta_file: Optional[str] = "") -> None:
    """Register each ``--dataset NAME=JSON:IMAGE_ROOT`` with the ``--dataset-meta`` file.

    Raises:
        ValueError naming the option, file or key that is wrong.
    """
    meta = read_dataset_meta(meta_file or "")
    if meta and not specs:
        raise ValueError("--dataset-meta is given without any --dataset")
    for spec in specs:
        _register(*parse_dataset_spec(spec), meta, meta_file or "")
