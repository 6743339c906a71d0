"""grouppose.tracking: PoseTracker identities, One-Euro smoothing, drawing and JSON output."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import Metadata

pytest.importorskip("norfair", reason="the tracker needs the 'track' extra")

from grouppose.tracking import (  # noqa: E402
    KeypointSmoother,
    OneEuroFilter,
    PoseTracker,
    PoseTrackJsonWriter,
    draw_tracked_poses,
    track_color,
)

K = 17
# One person's shape, about 60 x 150 pixels, centred on 0.
SHAPE = np.random.default_rng(0).uniform([-30, -75], [30, 75], (K, 2))


def pose(x: float, y: float) -> np.ndarray:
    """(K, 3) keypoints of the person at (x, y), keypoint scores 1."""
    return np.concatenate([SHAPE + [x, y], np.ones((K, 1))], axis=1)


def frame(*centres) -> np.ndarray:
    return np.stack([pose(x, y) for x, y in centres]).reshape(-1, K, 3)


def test_identities_survive_a_crossing():
    # Two people walk into each other along the same line (their boxes overlap for ~10 frames
    # and coincide at frame 20); the motion prediction keeps each on its own track.
    tracker = PoseTracker()
    ids = [tracker.update(frame((100 + 10 * t, 200), (500 - 10 * t, 205)), np.ones(2))
           for t in range(41)]
    assert ids[0].tolist() == [-1, -1]  # min_hits=2: an id from the second frame on
    assert all(i.tolist() == [1, 2] for i in ids[1:]), ids


def test_people_side_by_side_with_overlapping_boxes_stay_apart():
    # Boxes 60 pixels wide, 40 apart: overlapping boxes, distinct joints (OKS ~ 0).
    tracker = PoseTracker(min_hits=1)
    for t in range(10):
        ids = tracker.update(frame((200 + 2 * t, 200), (240 + 2 * t, 200)), np.ones(2))
        assert ids.tolist() == [1, 2]


def test_an_id_survives_max_missed_frames_and_no_more():
    tracker = PoseTracker(max_missed=3, min_hits=1)
    for t in range(10):
        assert tracker.update(frame((100 + 5 * t, 200)), np.ones(1)).tolist() == [1]
    for _ in range(3):  # 3 missed frames: the motion model carries the pose on
        assert tracker.update(np.zeros((0, K, 3)), np.zeros(0)).tolist() == []
    assert tracker.update(frame((100 + 5 * 13, 200)), np.ones(1)).tolist() == [1]

    for _ in range(4):  # 4 missed frames: the track has ended
        tracker.update(np.zeros((0, K, 3)), np.zeros(0))
    assert tracker.update(frame((100 + 5 * 18, 200)), np.ones(1)).tolist() == [2]


def test_reset_forgets_tracks_and_restarts_ids():
    tracker = PoseTracker(min_hits=1)
    tracker.update(frame((100, 100), (300, 100)), np.ones(2))
    tracker.reset()
    assert tracker.update(frame((300, 100)), np.ones(1)).tolist() == [1]


def test_numpy_and_torch_inputs_give_the_same_ids():
    frames = [frame((100 + 8 * t, 200), (400 - 8 * t, 220), (250, 100 + 3 * t)) for t in range(8)]
    # min_hits=1: ids are given in detection order at once (with 2, in the order of matching,
    # which float32 rounding of near-equal distances may change).
    numpy_tracker, torch_tracker = PoseTracker(min_hits=1), PoseTracker(min_hits=1)
    for poses in frames:
        expected = numpy_tracker.update(poses, np.ones(3))
        got = torch_tracker.update(torch.from_numpy(poses).float(), torch.ones(3))
        assert got.tolist() == expected.tolist()
    assert expected.tolist() == [1, 2, 3]


@pytest.mark.parametrize("keypoints, scores, message", [
    (np.zeros((2, K, 2)), np.ones(2), r"keypoints must have shape \(n, K, 3\).*\(2, 17, 2\)"),
    (np.zeros((K, 3)), np.ones(1), r"keypoints must have shape \(n, K, 3\)"),
    (np.zeros((2, K, 3)), np.ones(3), r"scores must have shape \(n,\) = \(2,\).*\(3,\)"),
    (np.full((1, K, 3), np.nan), np.ones(1), "keypoints must be finite"),
    (np.zeros((1, 5, 3)), np.ones(1), "num_keypoints=5: no standard OKS sigmas"),
])
def test_bad_input_is_refused_with_a_clear_error(keypoints, scores, message):
    with pytest.raises(ValueError, match=message):
        PoseTracker().update(keypoints, scores)


def test_reset_lets_the_next_video_have_another_keypoint_count():
    tracker = PoseTracker(min_hits=1)
    tracker.update(frame((100, 100)), np.ones(1))
    tracker.reset()
    crowdpose = np.concatenate([SHAPE[:14] + 100, np.ones((14, 1))], axis=1)[None]
    assert tracker.update(crowdpose, np.ones(1)).tolist() == [1]
    assert len(tracker.sigmas) == 14


@pytest.mark.parametrize("arguments, message", [
    ({"max_missed": 0}, "max_missed must be >= 1"),
    ({"max_missed": 3, "min_hits": 4}, r"min_hits must be in \[1, max_missed = 3\]"),
    ({"min_oks": 1.0}, r"min_oks must be in \(0, 1\)"),
    ({"sigmas": [0.1, -0.1]}, "sigmas must all be > 0"),
])
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        PoseTracker(**arguments)


def test_a_change_of_keypoint_count_is_refused():
    tracker = PoseTracker()
    tracker.update(frame((100, 100)), np.ones(1))
    with pytest.raises(ValueError, match="K=14 keypoints, earlier frames had 17"):
        tracker.update(np.ones((1, 14, 3)), np.ones(1))


def test_one_euro_filter_reduces_jitter_of_a_still_point_and_follows_a_ramp():
    noise = np.random.default_rng(1).normal(0, 2.0, 300)
    still = OneEuroFilter()
    filtered = np.array([still(np.array([v]), t / 30) for t, v in enumerate(noise)])[:, 0]
    # Jitter (RMS frame-to-frame change) falls several-fold; 2x leaves a wide margin.
    assert np.sqrt(np.mean(np.diff(filtered[30:]) ** 2)) < 0.5 * np.sqrt(
        np.mean(np.diff(noise[30:]) ** 2))
    ramp = OneEuroFilter()
    out = [ramp(np.array([10.0 * t]), t / 30)[0] for t in range(60)]
    # Behind a 10 px/frame ramp by less than 2 frames (beta raises the cutoff with speed).
    assert 0 < 10.0 * 59 - out[-1] < 20


def test_keypoint_smoother_filters_per_id_and_leaves_untracked_poses():
    smoother = KeypointSmoother()
    first = frame((100, 100), (300, 100))
    smoother(first, np.array([1, -1]), 0.0)
    second = frame((110, 100), (310, 100))
    out = smoother(second, np.array([1, -1]), 1 / 30)
    assert np.all(out[0, :, 0] < second[0, :, 0]) and np.all(out[0, :, 0] > first[0, :, 0])
    np.testing.assert_array_equal(out[1], second[1])
    np.testing.assert_array_equal(out[:, :, 2], second[:, :, 2])


def test_posetrack_json_has_ids_scores_and_keypoints(tmp_path):
    metadata = Metadata(keypoint_names=[f"k{i}" for i in range(K)],
                        keypoint_connection_rules=[("k0", "k1", (0, 0, 0))])
    writer = PoseTrackJsonWriter("clip", 25.0, metadata)
    writer.add_frame(frame((100, 100), (300, 100)), np.array([0.9, 0.8]), np.array([1, -1]))
    writer.add_frame(frame((105, 100)), np.array([0.7]), np.array([1]))
    path = tmp_path / "out" / "poses.json"
    writer.write(str(path))
    content = json.loads(path.read_text())
    assert [i["file_name"] for i in content["images"]] == ["clip/000000", "clip/000001"]
    assert content["images"][1]["time"] == pytest.approx(0.04)
    annotations = content["annotations"]
    assert [(a["image_id"], a["track_id"]) for a in annotations] == [(0, 1), (0, None), (1, 1)]
    assert annotations[0]["score"] == pytest.approx(0.9)
    assert len(annotations[0]["keypoints"]) == 3 * K and len(annotations[0]["scores"]) == K
    # Written rounded to 0.001 pixel.
    assert annotations[2]["keypoints"][:2] == pytest.approx(SHAPE[0] + [105, 100], abs=5e-4)
    assert content["categories"][0]["skeleton"] == [[1, 2]]


def test_drawing_uses_each_track_colour():
    metadata = Metadata(keypoint_names=[f"k{i}" for i in range(K)],
                        keypoint_connection_rules=[("k0", "k1", (0, 0, 0))])
    image = np.zeros((300, 500, 3), np.uint8)
    drawn = draw_tracked_poses(image, frame((120, 150), (380, 150)), np.array([1, 2]), metadata)
    assert track_color(1) != track_color(2)
    colours = {tuple(c) for c in drawn.reshape(-1, 3)}
    assert track_color(1) in colours and track_color(2) in colours
    assert not image.any()  # drawn on a copy
