"""Load a COCO-format keypoint json into Detectron2 dataset dicts, checked and with "area".

Detectron2's ``load_coco_json`` drops each person's ``area`` (the OKS scale Group Pose trains
with) unless asked for it, and passes malformed annotations through to fail much later, deep in a
data-loader worker. ``load_keypoint_json`` keeps ``area`` and the annotation ``id`` and applies one
policy at load time, so that each problem is either a clear error naming the json file and the
annotation id, or a counted skip logged in a single line per load:

Errors (``ValueError``):
    - ``keypoint_names`` in the dataset's metadata that are the json category's ``keypoints``
      in another order (the flip map, skeleton and sigmas would then mean other joints);
    - an image id that several images share (the annotations of one would silently go to the
      other);
    - an annotation whose ``category_id`` is not in the json's ``categories``;
    - several categories with keypoints (see ``keypoint_category``), or none that can be told;
    - image files of which none exists (e.g. a wrong image root);
    - an annotation whose keypoint list does not hold 3 * K numbers (K = the dataset's
      ``keypoint_names``), or holds something that is not a number (e.g. ``null``);
    - a bbox with a non-finite value.

Counted skips (one warning line):
    - a labeled keypoint (v > 0) with a NaN / infinite coordinate becomes unlabeled (0, 0, 0);
    - a labeled keypoint outside the image becomes unlabeled (as Detectron2 does after
      augmentation);
    - a person (iscrowd = 0) with neither a positive "area" nor a positive box is dropped.

Missing image files, when some exist, are one warning line: training replaces them (and counts
them against DATALOADER.MAX_BAD_IMAGES, see ``grouppose.data.unreadable_images``), so that a
requeued run does not end at a file lost since its start; evaluation stops at the first.

Counted notes (one info line; nothing valid is lost):
    - annotations of categories other than the keypoint category (e.g. "dog" next to "person")
      are dropped, counted per category name; the keypoint category becomes contiguous id 0
      (metadata ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``);
    - people without a usable "area" (missing, zero or NaN, e.g. all of CrowdPose) get their box
      area, as the official CrowdPose pipeline does;
    - people without any labeled keypoint, and images whose people are all crowd regions, stay in
      the dicts (evaluation and Detectron2's image filtering see them) but give no training
      target: the mapper drops them.

An empty (or missing) "annotations" list is valid: a dataset of people-free images, which can
be evaluated; training refuses a training set without any labeled person
(``grouppose.engine.trainer``).

Coordinates follow Detectron2: keypoints become continuous coordinates (pixel index + 0.5).
"""

import collections
import dataclasses
import json
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = [
    "LoadSummary",
    "check_keypoint_order",
    "check_unique_image_ids",
    "keypoint_category",
    "load_keypoint_json",
    "person_area",
]

logger = logging.getLogger(__name__)

# At most this many offending file names are quoted in an error message.
_MAX_QUOTED = 5


@dataclasses.dataclass
class LoadSummary:
    """What ``load_keypoint_json`` changed or noted, as counts (see the module docstring)."""

    dataset_name: str
    json_file: str
    images: int = 0
    people: int = 0
    nonfinite_keypoints: int = 0
    outside_keypoints: int = 0
    zero_area_people: int = 0
    area_from_box: int = 0
    people_without_keypoints: int = 0
    crowd_only_images: int = 0
    category: str = ""
    # annotations of other categories, dropped: category name -> count
    ignored_categories: Dict[str, int] = dataclasses.field(default_factory=dict)

    def log(self) -> None:
        """One warning line for the skips (if any), one info line for the rest."""
        skips = {
            "labeled keypoints with NaN/inf coordinates made unlabeled": self.nonfinite_keypoints,
            "labeled keypoints outside their image made unlabeled": self.outside_keypoints,
            "people with no positive area or box dropped": self.zero_area_people,
        }
        notes = {
            "people given their box area (no usable 'area')": self.area_from_box,
            "people without labeled keypoints (no training target)": self.people_without_keypoints,
            "images whose people are all crowd (no training target)": self.crowd_only_images,
        }
        where = f"dataset '{self.dataset_name}' ({self.json_file})"
        if any(skips.values()):
            logger.warning(f"{where}: " + "; ".join(f"{n} {what}" for what, n in skips.items()))
        logger.info(
            f"{where}: {self.images} images, {self.people} people; "
            + "; ".join(f"{n} {what}" for what, n in notes.items())
            + self._ignored_note()
        )

    def _ignored_note(self) -> str:
        if not self.ignored_categories:
            return ""
        counts = ", ".join(f"'{name}' {n}" for name, n in self.ignored_categories.items())
        return (f"; annotations of categories other than keypoint category '{self.category}' "
                f"ignored: {counts}")


def person_area(annotation: dict) -> Optional[float]:
    """A person's area in pixels: its "area" when positive and finite, else its box area.

    Args:
        annotation: a Detectron2 annotation dict ("bbox", "bbox_mode", optional "area").

    Returns:
        The area, or None when neither is positive.
    """
    area = annotation.get("area")
    if area is not None and np.isfinite(area) and area > 0:
        return float(area)
    x0, y0, x1, y1 = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    box_area = float(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))
    return box_area if box_area > 0 else None


def check_unique_image_ids(content: Dict, json_file: str) -> None:
    """Refuse a json whose images share an id: pycocotools keeps one of them and gives it the
    annotations of all, so an image would be trained and evaluated with another's people.

    Args:
        content: the parsed json.

    Raises:
        ValueError naming ``json_file`` and the duplicated ids.
    """
    counts = collections.Counter(image.get("id") for image in content.get("images") or [])
    duplicated = [image_id for image_id, n in counts.items() if n > 1]
    if duplicated:
        raise ValueError(
            f"{json_file}: several images share an id ({len(duplicated)} such ids: "
            + ", ".join(str(i) for i in duplicated[:_MAX_QUOTED])
            + (", ..." if len(duplicated) > _MAX_QUOTED else "")
            + "); each image needs its own id, as annotations refer to images by id"
        )


def check_keypoint_order(
    json_names: Sequence[str], keypoint_names: Sequence[str], json_file: str
) -> None:
    """Refuse ``keypoint_names`` that are the json category's ``keypoints`` in another order:
    the json's order is the order of every annotation's values.

    Raises:
        ValueError naming ``json_file`` and both orders.
    """
    json_names, keypoint_names = list(json_names), list(keypoint_names)
    if json_names != keypoint_names and sorted(json_names) == sorted(keypoint_names):
        raise ValueError(
            f"{json_file}: keypoint_names {keypoint_names} are its category's 'keypoints' in "
            f"another order ({json_names}); give them in the json's order, which is the order "
            "of each annotation's keypoint values"
        )


def _has_labeled_keypoint(annotation: Dict) -> bool:
    visibilities = (annotation.get("keypoints") or [])[2::3]
    return any(isinstance(v, (int, float)) and v > 0 for v in visibilities)


def _keypoint_category_candidates(
    categories: List[Dict], annotations: List[Dict]
) -> Tuple[List[Dict], str]:
    """The categories that may be the keypoint one, and how they were found (for messages)."""
    named = [c for c in categories if c.get("keypoints")]
    if named:
        return named, "list 'keypoints' names"
    by_id = {c["id"]: c for c in categories}
    used = {a["category_id"] for a in annotations if _has_labeled_keypoint(a)}
    if used:
        return [by_id[i] for i in sorted(used)], "have annotations with labeled keypoints"
    # A single category is the keypoint one even when nothing says so (e.g. people-free data).
    return (categories if len(categories) == 1 else []), "exist"


def keypoint_category(content: Dict, json_file: str) -> Tuple[Dict, Dict[str, int]]:
    """The json's keypoint category and the annotations of the others, which Group Pose ignores.

    The keypoint category is the one whose entry lists ``keypoints`` names, else the one the
    annotations with a labeled keypoint use, else the only category.

    Args:
        content: the parsed json ("categories", optional "annotations").

    Returns:
        the category entry, and {other category name: number of its annotations} for those
        with annotations.

    Raises:
        ValueError naming ``json_file`` when an annotation's category_id is not in the
        categories, or when several categories (or none) qualify.
    """
    categories = content.get("categories") or []
    annotations = content.get("annotations") or []
    names = {c["id"]: c.get("name", str(c["id"])) for c in categories}
    unknown = next((a for a in annotations if a.get("category_id") not in names), None)
    if unknown is not None:
        raise ValueError(
            f"{json_file}: annotation id {unknown.get('id')} has category_id "
            f"{unknown.get('category_id')}, which is not in 'categories' {sorted(names)}"
        )
    candidates, how = _keypoint_category_candidates(categories, annotations)
    if len(candidates) != 1:
        found = [names[c["id"]] for c in candidates] if candidates else list(names.values())
        raise ValueError(
            f"{json_file}: cannot tell the keypoint category: {len(candidates)} categories "
            f"{how} (categories {found}); Group Pose learns one keypoint category: keep only "
            "it (and its annotations) in the json, with its keypoint names in 'keypoints'"
        )
    (category,) = candidates
    ignored = collections.Counter(
        names[a["category_id"]] for a in annotations if a["category_id"] != category["id"]
    )
    return category, dict(ignored)


def _check_json(json_file: str) -> Tuple[Dict, Dict[str, int]]:
    """What Detectron2's loader does not check: unique image ids and a single keypoint
    category (see ``keypoint_category``, whose result this returns)."""
    with PathManager.open(json_file) as f:
        content = json.load(f)
    check_unique_image_ids(content, json_file)
    return keypoint_category(content, json_file)


def _set_category_metadata(dataset_name: str, category: Dict) -> None:
    """The keypoint category is contiguous id 0: the model predicts it, and evaluators map it
    back to the json's id through this metadata."""
    metadata = MetadataCatalog.get(dataset_name)
    metadata.thing_classes = [category["name"]]
    metadata.thing_dataset_id_to_contiguous_id = {category["id"]: 0}


def _keep_category(records: List[dict], category_id: int) -> None:
    """Drop the annotations of other categories; the kept ones get contiguous id 0."""
    for record in records:
        kept = [a for a in record["annotations"] if a["category_id"] == category_id]
        for annotation in kept:
            annotation["category_id"] = 0
        record["annotations"] = kept


def _first_non_numeric_keypoints(json_file: str) -> Optional[int]:
    """The id of the first annotation whose keypoints hold a non-number (e.g. null), if any."""
    with PathManager.open(json_file) as f:
        annotations = json.load(f).get("annotations", [])
    for annotation in annotations:
        values = annotation.get("keypoints") or []
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return annotation.get("id")
    return None


def _load_coco_records(json_file: str, image_root: str) -> List[dict]:
    """Detectron2's loader, keeping "area" and "id"; a non-numeric keypoint is a clear error.

    Categories keep the json's ids: without a dataset name Detectron2 neither maps them nor sets
    metadata for all categories (``_set_category_metadata`` sets it for the keypoint one)."""
    try:
        return load_coco_json(json_file, image_root, extra_annotation_keys=["area", "id"])
    except TypeError as e:
        annotation_id = _first_non_numeric_keypoints(json_file)
        if annotation_id is None:
            raise
        raise ValueError(
            f"{json_file}: annotation id {annotation_id} has a keypoint value that is not a number"
        ) from e


def _check_image_files(records: List[dict], json_file: str) -> None:
    missing = [r["file_name"] for r in records if not PathManager.isfile(r["file_name"])]
    if not missing:
        return
    message = (f"{json_file}: {len(missing)} of {len(records)} image files are missing, e.g. "
               + ", ".join(f"'{m}'" for m in missing[:_MAX_QUOTED]))
    if len(missing) == len(records):
        raise ValueError(message)
    logger.warning(f"{message}; training replaces them by other images (DATALOADER."
                   "MAX_BAD_IMAGES), evaluation stops at the first")


def _check_keypoint_count(annotation: dict, json_file: str, num_keypoints: int) -> None:
    count = len(annotation.get("keypoints") or [])
    if count != 3 * num_keypoints:
        raise ValueError(
            f"{json_file}: annotation id {annotation.get('id')} has {count} keypoint values "
            f"({count / 3:g} keypoints), but the dataset's metadata has K = {num_keypoints} "
            f"keypoint_names ({3 * num_keypoints} values)"
        )


def _check_boxes(annotations: List[dict], json_file: str) -> np.ndarray:
    """(N, 4) XYWH boxes; a non-finite value is an error naming the annotation."""
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
    if len(bad):
        annotation = annotations[bad[0]]
        raise ValueError(
            f"{json_file}: annotation id {annotation.get('id')} has a non-finite bbox "
            f"{annotation['bbox']}"
        )
    return boxes


def _clean_keypoints(
    keypoints: np.ndarray, image_sizes: np.ndarray, summary: LoadSummary
) -> None:
    """Make labeled keypoints with NaN/inf or out-of-image coordinates unlabeled, in place.

    Args:
        keypoints: (N, K, 3) x, y, v.
        image_sizes: (N, 2) width, height of each annotation's image.
    """
    labeled = keypoints[:, :, 2] > 0
    finite = np.isfinite(keypoints[:, :, :2]).all(axis=2)
    with np.errstate(invalid="ignore"):
        xy = keypoints[:, :, :2]
        inside = ((xy >= 0) & (xy <= image_sizes[:, None, :])).all(axis=2)
    summary.nonfinite_keypoints += int((labeled & ~finite).sum())
    summary.outside_keypoints += int((labeled & finite & ~inside).sum())
    # COCO convention: an unlabeled keypoint is (0, 0, 0).
    keypoints[~(labeled & finite & inside)] = 0


def _areas(annotations: List[dict], boxes: np.ndarray, summary: LoadSummary) -> np.ndarray:
    """(N,) person areas: "area" when positive and finite, else the box area (see
    ``person_area``; boxes are XYWH as load_coco_json gives them). 0 = no usable area."""
    given = np.array([np.nan if a.get("area") is None else a["area"] for a in annotations],
                     dtype=np.float64)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(given) & (given > 0)
    box_areas = boxes[:, 2].clip(min=0) * boxes[:, 3].clip(min=0)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
    summary.area_from_box += int((~usable & ~crowd & (box_areas > 0)).sum())
    return np.where(usable, given, box_areas)


def _clean_records(
    records: List[dict], json_file: str, num_keypoints: int, summary: LoadSummary
) -> None:
    """Apply the module's policy to all annotations at once (vectorised: COCO has 262k)."""
    annotations = [a for r in records for a in r["annotations"]]
    for annotation in annotations:
        _check_keypoint_count(annotation, json_file, num_keypoints)
    boxes = _check_boxes(annotations, json_file)
    keypoints = np.array([a["keypoints"] for a in annotations], dtype=np.float64)
    keypoints = keypoints.reshape(-1, num_keypoints, 3)
    image_sizes = np.array([(r["width"], r["height"]) for r in records for _ in r["annotations"]],
                           dtype=np.float64).reshape(-1, 2)
    _clean_keypoints(keypoints, image_sizes, summary)
    areas = _areas(annotations, boxes, summary)
    has_keypoints = (keypoints[:, :, 2] > 0).any(axis=1)
    # 3 * K, not -1: numpy cannot infer a dimension of an empty array (no annotations).
    flat_keypoints = keypoints.reshape(len(annotations), 3 * num_keypoints).tolist()
    for annotation, points, area in zip(annotations, flat_keypoints, areas.tolist()):
        annotation["keypoints"] = points
        if not annotation.get("iscrowd", 0):
            annotation["area"] = area
    _drop_arealess_people(records, areas, has_keypoints, summary)


def _drop_arealess_people(
    records: List[dict], areas: np.ndarray, has_keypoints: np.ndarray, summary: LoadSummary
) -> None:
    """Drop people without a usable area; count people and crowd-only images.

    Args:
        areas, has_keypoints: (N,) over the records' annotations, in order.
    """
    index = 0
    for record in records:
        kept, people = [], 0
        for annotation in record["annotations"]:
            crowd = bool(annotation.get("iscrowd", 0))
            if not crowd and areas[index] <= 0:
                summary.zero_area_people += 1
            else:
                kept.append(annotation)
                people += not crowd
                summary.people_without_keypoints += int(not crowd and not has_keypoints[index])
            index += 1
        record["annotations"] = kept
        summary.people += people
        summary.crowd_only_images += int(people == 0 and len(kept) > 0)


def load_keypoint_json(
    json_file: str, image_root: str, dataset_name: str, num_keypoints: int
) -> List[Dict]:
    """Load a COCO-format keypoint json as Detectron2 dataset dicts (see the module docstring).

    Args:
        json_file: the COCO-format annotation file.
        image_root: folder the json's image ``file_name`` values are relative to.
        dataset_name: the registered name (used for metadata and messages).
        num_keypoints: K, the number of keypoints every annotation must have.

    Returns:
        list of dicts with "file_name", "height", "width", "image_id" and "annotations"
        (possibly empty); each annotation has "bbox" (XYWH_ABS), "keypoints" (3K floats),
        "category_id" (0: the keypoint category), "iscrowd", "id" and, for people
        (iscrowd = 0), "area" (> 0, pixels).

    Raises:
        ValueError naming ``json_file`` (and the annotation id) for the errors listed in the
        module docstring.
    """
    category, ignored = _check_json(json_file)
    keypoint_names = MetadataCatalog.get(dataset_name).get("keypoint_names")
    if keypoint_names is not None:
        check_keypoint_order(category.get("keypoints") or [], keypoint_names, json_file)
    records = _load_coco_records(json_file, image_root)
    _set_category_metadata(dataset_name, category)
    _keep_category(records, category["id"])
    _check_image_files(records, json_file)
    summary = LoadSummary(dataset_name=dataset_name, json_file=json_file, images=len(records),
                          category=category["name"], ignored_categories=ignored)
    _clean_records(records, json_file, num_keypoints, summary)
    summary.log()
    return records
