"""demo.py: images, folders, globs and videos in; drawn skeletons, counts and latency out."""

import os
import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import Metadata, MetadataCatalog
from detectron2.structures import Instances
from helpers.tiny_grouppose import NUM_INSTANCES, save_tiny_model

from grouppose import demo
from grouppose.visualization import draw_poses


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny")))


def run_demo(config_file, *args):
    """demo.main's exit status: its return value, or the code of a user error's SystemExit."""
    try:
        return demo.main(["--config-file", config_file, "--confidence-threshold", "0", *args])
    except SystemExit as stop:
        return stop.code


def random_bgr(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_skeletons_follow_the_datasets_connection_rules():
    """A visible left shoulder and left elbow are joined by a line with COCO's metadata, not
    without connection rules."""
    metadata = MetadataCatalog.get("keypoints_coco_2017_val")
    names = metadata.keypoint_names
    keypoints = torch.zeros((1, len(names), 3))
    shoulder, elbow = (40.0, 40.0), (160.0, 160.0)
    keypoints[0, names.index("left_shoulder")] = torch.tensor([*shoulder, 1.0])
    keypoints[0, names.index("left_elbow")] = torch.tensor([*elbow, 1.0])
    instances = Instances((200, 200), pred_keypoints=keypoints)
    image = np.zeros((200, 200, 3), np.uint8)

    with_rules = draw_poses(image, instances, metadata)
    without_rules = draw_poses(image, instances, Metadata(keypoint_names=names))

    assert with_rules.shape == image.shape and with_rules.dtype == np.uint8
    middle = (slice(97, 104), slice(97, 104))
    assert with_rules[middle].max() > 0
    assert without_rules[middle].max() == 0
    assert without_rules[38:43, 38:43].max() > 0  # the keypoints themselves are drawn


def test_folder_of_gray_rgba_16_bit_and_color_images(config_file, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    color = random_bgr(60, 80)
    images = {
        "color.jpg": color,
        "gray.png": color[:, :, 0],
        "rgba.png": np.concatenate([color, np.full_like(color[:, :, :1], 128)], axis=2),
        "deep.png": color.astype(np.uint16) * 257,
    }
    for name, image in images.items():
        cv2.imwrite(str(folder / name), image)
    (folder / "notes.txt").write_text("not an image, not an input")
    output = tmp_path / "vis"

    assert run_demo(config_file, "--input", str(folder), "--output", str(output)) == 0

    assert sorted(p.name for p in output.iterdir()) == sorted(images)
    for name in images:
        drawn = cv2.imread(str(output / name))
        assert drawn.shape == (60, 80, 3)
    stdout, stderr = capsys.readouterr()
    for name in images:
        assert re.search(rf"{re.escape(name)}: {NUM_INSTANCES} people in \d+ ms", stdout), stdout
    assert "4/4" in stderr  # the progress bar


def test_drawing_shows_the_poses(config_file, tmp_path):
    image_file = tmp_path / "people.png"
    image = np.full((64, 96, 3), 90, np.uint8)
    cv2.imwrite(str(image_file), image)
    output = tmp_path / "drawn.png"

    assert run_demo(config_file, "--input", str(image_file), "--output", str(output)) == 0

    assert (cv2.imread(str(output)) != image).any()


def test_unreadable_inputs_are_named_and_skipped(config_file, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), random_bgr(40, 50))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    output = tmp_path / "vis"

    assert run_demo(config_file, "--input", str(folder), "--output", str(output)) == 1

    assert [p.name for p in output.iterdir()] == ["good.png"]
    stderr = capsys.readouterr().err
    assert "broken.jpg" in stderr and "cannot read image" in stderr


def test_glob_input(config_file, tmp_path, capsys):
    for name in ("a.png", "b.png", "c.jpg"):
        cv2.imwrite(str(tmp_path / name), random_bgr(40, 40))
    output = tmp_path / "out"

    assert run_demo(config_file, "--input", str(tmp_path / "*.png"), "--output", str(output)) == 0

    assert sorted(p.name for p in output.iterdir()) == ["a.png", "b.png"]


def test_glob_without_match_is_an_error(config_file, tmp_path, capsys):
    pattern = str(tmp_path / "*.jpg")
    assert run_demo(config_file, "--input", pattern, "--output", str(tmp_path)) == 2
    assert f"--input '{pattern}' matches no image file" in capsys.readouterr().err


def test_video_to_mp4(config_file, tmp_path, capsys):
    video_file = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video_file, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (80, 48))
    for seed in range(3):
        writer.write(random_bgr(48, 80, seed))
    writer.release()
    output = tmp_path / "clip_poses.mp4"

    assert run_demo(config_file, "--video-input", video_file, "--output", str(output)) == 0

    drawn = cv2.VideoCapture(str(output))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    success, frame = drawn.read()
    drawn.release()
    assert success and frame.shape == (48, 80, 3)
    stdout, stderr = capsys.readouterr()
    assert f"3 frames, {NUM_INSTANCES:.1f} people per frame" in stdout
    assert "3/3" in stderr  # the progress bar


def test_video_output_folder_gets_an_mp4_named_after_the_input(config_file, tmp_path):
    video_file = str(tmp_path / "walk.avi")
    writer = cv2.VideoWriter(video_file, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (48, 48))
    writer.write(random_bgr(48, 48))
    writer.release()
    output = tmp_path / "videos"
    output.mkdir()

    assert run_demo(config_file, "--video-input", video_file, "--output", str(output)) == 0

    assert [p.name for p in output.iterdir()] == ["walk.mp4"]


def test_unreadable_video_is_named(config_file, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    output = str(tmp_path / "drawn")
    assert run_demo(config_file, "--video-input", str(broken), "--output", output) == 2
    assert str(broken) in capsys.readouterr().err
    missing = str(tmp_path / "missing.mp4")
    assert run_demo(config_file, "--video-input", missing, "--output", output) == 2
    assert f"video file not found: '{missing}'" in capsys.readouterr().err


def test_exactly_one_source_is_required(config_file, tmp_path):
    assert run_demo(config_file, "--output", str(tmp_path)) == 2  # argparse's usage error
    assert run_demo(config_file, "--input", "x.png", "--video-input", "y.mp4") == 2


def test_single_image_output_without_extension_is_a_folder(config_file, tmp_path):
    image_file = tmp_path / "person.png"
    cv2.imwrite(str(image_file), random_bgr(48, 64))
    output = tmp_path / "drawn"
    assert run_demo(config_file, "--input", str(image_file), "--output", str(output)) == 0
    assert [p.name for p in output.iterdir()] == ["person.png"]


@pytest.mark.parametrize("source", ["image", "video"])
def test_output_file_that_cannot_hold_the_result_is_refused_before_inference(
    config_file, tmp_path, capsys, source
):
    """Refused before the model is built: the weights named here do not even exist."""
    input_file = tmp_path / ("person.png" if source == "image" else "clip.avi")
    input_file.write_bytes(b"")
    output = tmp_path / "result.txt"
    flag = "--input" if source == "image" else "--video-input"
    status = run_demo(config_file, flag, str(input_file), "--output", str(output),
                      "--opts", "MODEL.WEIGHTS", str(tmp_path / "missing.pth"))
    assert status == 2
    expected = ".jpg" if source == "image" else ".mp4"
    article = "an" if source == "image" else "a"
    assert re.search(
        rf"--output '.*result.txt': {article} {source} file must end with .*\{expected}",
        capsys.readouterr().err,
    )


def test_video_writer_failure_says_why(tmp_path):
    with pytest.raises(ValueError, match=r"cannot write video .*MPEG-4.*writable"):
        demo.open_video_writer(str(tmp_path / "no_such_folder" / "out.mp4"), 5.0, (48, 48, 3))


def test_untrained_weights_are_refused_with_how_to_get_a_model(config_file, tmp_path, capsys):
    """A config's backbone-only weights (as the ImageNet ones the training configs start
    from) do not make a pose estimator: the demo says so instead of drawing random poses."""
    image_file = tmp_path / "person.png"
    cv2.imwrite(str(image_file), random_bgr(48, 64))
    state = torch.load(os.path.join(os.path.dirname(config_file), "tiny_model.pth"))["model"]
    backbone_only = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("backbone.")}, backbone_only)
    status = run_demo(config_file, "--input", str(image_file), "--output", str(tmp_path / "o"),
                      "--opts", "MODEL.WEIGHTS", str(backbone_only))
    assert status == 2
    error = capsys.readouterr().err
    assert "is not a trained Group Pose model" in error
    assert "tools/convert_official_checkpoint.py" in error


# (inputs, --output) relative to a folder holding photos/a.png, photos/b.png, clips/clip.mp4.
_OVERWRITING = {
    "output folder is the input folder": (["--input", "photos/"], "photos/", "photos/"),
    "same folder, other spelling": (["--input", "photos"], "./photos/../photos", "photos"),
    "output file is the input file": (["--input", "photos/a.png"], "photos/a.png",
                                      "photos/a.png"),
    "output folder holds the input": (["--input", "photos/a.png"], "photos/", "photos/a.png"),
    "glob": (["--input", "photos/*.png"], "photos", "photos/a.png"),
    "several inputs, output is one": (["--input", "photos/a.png", "photos/b.png"],
                                      "photos/b.png", "photos/b.png"),
    "video into its own folder": (["--video-input", "clips/clip.mp4"], "clips/",
                                  "clips/clip.mp4"),
    "video onto itself": (["--video-input", "clips/clip.mp4"], "clips/clip.mp4",
                          "clips/clip.mp4"),
    "through a symbolic link": (["--input", "photos/"], "link/", "photos/"),
}


@pytest.mark.parametrize("case", sorted(_OVERWRITING))
def test_output_that_would_overwrite_an_input_is_refused_before_the_model(
    config_file, tmp_path, capsys, monkeypatch, case
):
    """Refused before the model is built (the weights named do not exist), in one line naming
    both paths, and every input is left as it was."""
    inputs, output, named_input = _OVERWRITING[case]
    (tmp_path / "photos").mkdir()
    (tmp_path / "clips").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "photos" / name), random_bgr(48, 64))
    (tmp_path / "clips" / "clip.mp4").write_bytes(b"not decoded: refused before")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.chdir(tmp_path)

    status = run_demo(config_file, *inputs, "--output", output,
                      "--opts", "MODEL.WEIGHTS", str(tmp_path / "missing.pth"))

    assert status == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert f"--output '{output}'" in line and f"input '{named_input}'" in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_output_next_to_or_inside_the_input_folder_is_accepted(config_file, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), random_bgr(48, 64))
    original = (photos / "a.png").read_bytes()
    for output in (photos / "drawn", tmp_path / "drawn", photos / "a_drawn.png"):
        assert run_demo(config_file, "--input", str(photos / "a.png"), "--output",
                        str(output)) == 0
    assert (photos / "a.png").read_bytes() == original
    assert (photos / "drawn" / "a.png").is_file() and (photos / "a_drawn.png").is_file()
