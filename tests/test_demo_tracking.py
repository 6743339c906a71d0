"""demo.py --track / --smooth / --output-json: the options' checks and their wiring, on the
tiny random model (what it finds is meaningless; tests/tracking/test_tracking_video.py checks
ids)."""

import json

import cv2
import numpy as np
import pytest
from helpers.tiny_grouppose import NUM_INSTANCES, save_tiny_model

from grouppose import demo

pytest.importorskip("norfair", reason="the tracker needs the 'track' extra")



@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def video_file(tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (80, 48))
    for seed in range(3):
        writer.write(np.random.default_rng(seed).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("args, message", [
    (["--video-input", "clip.mp4", "--smooth"], "--smooth and --output-json need --track"),
    (["--video-input", "clip.mp4", "--output-json", "a.json"],
     "--smooth and --output-json need --track"),
    (["--input", "a.jpg", "--track"], "--track applies to --video-input and --webcam"),
    (["--video-input", "clip.mp4", "--track", "--output-json", "poses.txt"],
     "--output-json 'poses.txt' must end with .json"),
])
def test_tracking_options_that_do_not_apply_are_refused(config_file, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--config-file", config_file, *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_track_smooth_and_json_on_a_video(config_file, video_file, tmp_path):
    output_json = tmp_path / "out" / "poses.json"
    assert demo.main(["--config-file", config_file, "--confidence-threshold", "0",
                      "--video-input", video_file, "--output", str(tmp_path / "tracked.mp4"),
                      "--track", "--smooth", "--output-json", str(output_json)]) == 0
    content = json.loads(output_json.read_text())
    assert [image["file_name"] for image in content["images"]] == [
        "clip/000000", "clip/000001", "clip/000002"]
    assert content["images"][1]["time"] == pytest.approx(0.2)  # 5 frames per second
    annotations = content["annotations"]
    assert len(annotations) == 3 * NUM_INSTANCES  # every pose, tracked or not
    assert {a["image_id"] for a in annotations} == {0, 1, 2}
    assert all(a["track_id"] is None for a in annotations if a["image_id"] == 0)  # min_hits=2
    assert all(len(a["keypoints"]) == 51 and 0 <= a["score"] <= 1 for a in annotations)
    assert content["categories"][0]["keypoints"][0] == "nose"  # the COCO metadata's names
    drawn = cv2.VideoCapture(str(tmp_path / "tracked.mp4"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    drawn.release()
