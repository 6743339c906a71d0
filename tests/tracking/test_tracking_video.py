"""End to end: a generated video of moving figures, a small model trained on its frames,
``demo.py --video-input --track --output-json``, and the JSON's track ids against the figures'
true identities."""

import json
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
import pytest
import torch

from grouppose import demo

pytest.importorskip("norfair", reason="the tracker needs the 'track' extra")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from helpers.training_utils import FAST_OPTS, IMAGE_SIZE, TINY_CONFIG  # noqa: E402

from grouppose.data import register_synthetic_dataset  # noqa: E402
from grouppose.data.synthetic_figures import (  # noqa: E402
    _EXTENT_ABOVE_PELVIS,
    _EXTENT_BELOW_PELVIS,
    POINT_NAMES,
    _background,
    _Canvas,
    _draw_figure,
    _sample_pose,
    _sample_style,
)
from grouppose.engine import Trainer  # noqa: E402
from grouppose.modeling.oks import COCO_OKS_SIGMAS  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model: 2-4 minutes on one (shared) CPU thread

VIDEO_SET = "tracking_video_frames"
NUM_FRAMES = 12
FPS = 10.0
HEIGHT_PX = 84.0  # each figure's height, head top to ankles
# Two figures walking towards each other, without meeting: pelvis (x, y) at frame 0 and velocity
# (pixels per frame).
WALKS = ((np.array([28.0, 70.0]), np.array([2.0, 0.3])),
         (np.array([100.0, 66.0]), np.array([-2.0, -0.2])))



def render_video(path: Path) -> List[Dict[int, np.ndarray]]:
    """Write the mp4; returns per frame each figure's (17, 2) true keypoints by identity (1, 2).
    """
    rng = np.random.default_rng(0)
    background = _background(rng, IMAGE_SIZE, IMAGE_SIZE)
    scale = HEIGHT_PX / (_EXTENT_ABOVE_PELVIS + _EXTENT_BELOW_PELVIS)
    figures = [(_sample_pose(rng, True), _sample_style(rng, scale)) for _ in WALKS]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS,
                             (IMAGE_SIZE, IMAGE_SIZE))
    truth = []
    for frame in range(NUM_FRAMES):
        image = background.copy()
        people = {}
        for identity, ((local, style), (start, velocity)) in enumerate(zip(figures, WALKS), 1):
            pelvis = start + frame * velocity
            points = {name: np.rint(pelvis + scale * xy) for name, xy in local.items()}
            _draw_figure(_Canvas(image, None), points, style, True, scale)
            people[identity] = np.stack([points[name] for name in POINT_NAMES[:17]])
        writer.write(image)
        truth.append(people)
    writer.release()
    return truth


def write_training_set(video: Path, truth: List[Dict[int, np.ndarray]], root: Path) -> None:
    """The video's decoded frames with their true keypoints as a COCO-layout dataset."""
    (root / "images").mkdir(parents=True)
    capture = cv2.VideoCapture(str(video))
    images, annotations = [], []
    for image_id, people in enumerate(truth, 1):
        success, frame = capture.read()
        assert success
        cv2.imwrite(str(root / "images" / f"{image_id:06d}.png"), frame)
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png",
                       "height": IMAGE_SIZE, "width": IMAGE_SIZE})
        for keypoints in people.values():
            low, high = keypoints.min(0) - 6, keypoints.max(0) + 6
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "iscrowd": 0, "num_keypoints": 17, "area": float(np.prod(high - low) * 0.6),
                "bbox": [*low.tolist(), *(high - low).tolist()],
                "keypoints": np.concatenate([keypoints, np.full((17, 1), 2)], 1)
                .reshape(-1).tolist(),
            })
    capture.release()
    category = {"id": 1, "name": "person", "keypoints": list(POINT_NAMES[:17]), "skeleton": []}
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [category]}))


def oks(pose: np.ndarray, truth: np.ndarray) -> float:
    """OKS of a (17, 3) predicted pose against (17, 2) true keypoints (area: their box)."""
    area = max(np.prod(truth.max(0) - truth.min(0)), 1.0)
    squared = ((pose[:, :2] - truth) ** 2).sum(1)
    return float(np.mean(np.exp(-squared / (2 * area * (2 * np.array(COCO_OKS_SIGMAS)) ** 2))))


@pytest.fixture(scope="module")
def video_and_model(tmp_path_factory):
    """(video, truth, weights): the model trained on the video's own frames until it finds the
    two figures (200 iterations on one thread)."""
    root = tmp_path_factory.mktemp("tracking_video")
    video = root / "walk.mp4"
    truth = render_video(video)
    write_training_set(video, truth, root / "frames")
    if VIDEO_SET in DatasetCatalog.list():
        DatasetCatalog.remove(VIDEO_SET)
        MetadataCatalog.remove(VIDEO_SET)
    register_synthetic_dataset(VIDEO_SET, str(root / "frames"))
    from grouppose.config import get_grouppose_cfg

    cfg = get_grouppose_cfg(str(TINY_CONFIG))
    cfg.merge_from_list([
        *FAST_OPTS, "DATASETS.TRAIN", f"('{VIDEO_SET}',)", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(root / "output"), "SOLVER.MAX_ITER", "200", "SOLVER.BASE_LR", "1e-3",
        "SOLVER.STEPS", "()", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "100000",
        "INPUT.RANDOM_FLIP", "none",
    ])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return video, truth, root / "output" / "model_final.pth"


def test_demo_track_ids_follow_the_figures(video_and_model, tmp_path):
    video, truth, weights = video_and_model
    output_json = tmp_path / "poses.json"
    assert demo.main([
        "--config-file", str(TINY_CONFIG), "--video-input", str(video),
        "--output", str(tmp_path / "tracked.mp4"), "--track", "--output-json", str(output_json),
        "--confidence-threshold", "0.3",
        "--opts", *FAST_OPTS, "DATASETS.TEST", f"('{VIDEO_SET}',)", "MODEL.WEIGHTS", str(weights),
    ]) == 0

    content = json.loads(output_json.read_text())
    assert len(content["images"]) == NUM_FRAMES
    assert content["categories"][0]["keypoints"] == list(POINT_NAMES[:17])
    ids_of: Dict[int, List[int]] = {1: [], 2: []}
    for frame, people in enumerate(truth):
        poses = [a for a in content["annotations"] if a["image_id"] == frame]
        for identity, keypoints in people.items():
            similarity = [oks(np.reshape(a["keypoints"], (17, 3)), keypoints) for a in poses]
            # The figure is found when a pose covers it at OKS >= 0.5 (COCO's loosest AP
            # threshold); its track id then is that pose's.
            if similarity and max(similarity) >= 0.5:
                track_id = poses[int(np.argmax(similarity))]["track_id"]
                if track_id is not None:  # None: not given an id yet (its first frame)
                    ids_of[identity].append(track_id)
    for identity, ids in ids_of.items():
        # Found and tracked on most frames (all but the first, where min_hits=2 gives no id).
        assert len(ids) >= NUM_FRAMES // 2, (identity, ids_of)
        assert len(set(ids)) == 1, (identity, ids_of)  # one track id per figure
    assert ids_of[1][0] != ids_of[2][0]
