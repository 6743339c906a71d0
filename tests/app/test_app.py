"""The browser demo (python -m grouppose.app): its logic as plain functions, then the real page
in headless Chromium (skipped with the reason where Gradio, Selenium or Chromium are absent;
`make browser-test-deps` installs them)."""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

import cv2
import numpy as np
import pytest
from helpers.tiny_grouppose import NUM_INSTANCES, REPO_ROOT, save_tiny_model, tiny_config
from helpers.training_utils import subprocess_env

from grouppose.app import PoseApp, UploadError, load_upload
from grouppose.app.__main__ import DEFAULT_HOST, get_parser, main
from grouppose.data.synthetic_figures import render_scene
from grouppose.predictor import GroupPosePredictor

NUM_KEYPOINTS = 17  # the tiny model's (COCO)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def app(config_file):
    return PoseApp(GroupPosePredictor(config_file, score_threshold=0.0))


def people_image(path, seed=0):
    """A generated image of people (PNG) at ``path``; returns it, (H, W, 3) BGR."""
    image = render_scene(np.random.default_rng(seed), 240, 160).image
    cv2.imwrite(str(path), image)
    return image


def png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` pixels and holds none (a huge image's header:
    the app must refuse it before decoding)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------
# Uploads


def test_an_image_upload_is_read_as_bgr(tmp_path):
    image = people_image(tmp_path / "people.png")
    np.testing.assert_array_equal(load_upload(str(tmp_path / "people.png")), image)


def test_a_webcam_picture_is_rgb_and_becomes_bgr():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    bgr = load_upload(rgb)
    assert bgr.shape == (4, 5, 3) and (bgr[..., 2] == 200).all() and (bgr[..., 0] == 0).all()


def test_a_file_that_is_no_image_is_refused_by_its_name_not_its_path(tmp_path):
    path = tmp_path / "holiday.jpg"
    path.write_text("these are not the pixels you are looking for")
    with pytest.raises(UploadError, match="'holiday.jpg' is not an image") as error:
        load_upload(str(path))
    assert str(tmp_path) not in str(error.value)


def test_a_truncated_image_is_refused(tmp_path):
    people_image(tmp_path / "people.png")
    data = (tmp_path / "people.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UploadError, match="'cut.png' cannot be decoded"):
        load_upload(str(tmp_path / "cut.png"))


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    path = png_header_only(tmp_path / "huge.png", 12000, 12000)
    with pytest.raises(UploadError, match=r"12000 x 12000 pixels \(144.0 megapixels\), more than "
                                          r"the 40 megapixels"):
        load_upload(str(path))
    with pytest.raises(UploadError, match="more than the 0.0001 megapixels"):
        load_upload(np.zeros((20, 10, 3), np.uint8), max_pixels=100)


def test_no_upload_asks_for_one():
    with pytest.raises(UploadError, match="upload an image or take a webcam picture"):
        load_upload(None)


# ------------------------------------------------------------------------------------------
# Poses: drawing and JSON


def test_threshold_0_keeps_every_pose_of_topk_and_1_none(app, tmp_path):
    image = people_image(tmp_path / "people.png")
    answer = app.answer(str(tmp_path / "people.png"), 0.0)
    poses = answer.poses
    # The tiny model keeps TEST_TOPK poses, each scoring > 0 (a sigmoid).
    assert len(poses["people"]) == NUM_INSTANCES
    assert answer.message.startswith(f"**{NUM_INSTANCES} people** scoring above 0 ")
    assert poses["image"] == {"height": 160, "width": 240}
    assert len(poses["keypoint_names"]) == NUM_KEYPOINTS
    assert poses["keypoint_names"][0] == "nose"
    scores = [person["score"] for person in poses["people"]]
    assert scores == sorted(scores, reverse=True)
    for person in poses["people"]:
        assert np.array(person["keypoints"]).shape == (NUM_KEYPOINTS, 3)
    assert json.loads(json.dumps(poses)) == poses
    assert answer.drawing.shape == image.shape and answer.drawing.dtype == np.uint8
    assert (answer.drawing != image[:, :, ::-1]).any()  # RGB, with poses drawn on it

    nobody = app.answer(str(tmp_path / "people.png"), 1.0)
    assert nobody.poses["people"] == [] and nobody.message.startswith("**0 people**")
    np.testing.assert_array_equal(nobody.drawing, image[:, :, ::-1])


def test_the_slider_keeps_the_poses_scoring_above_it(app, tmp_path):
    people_image(tmp_path / "people.png")
    everyone = app.answer(str(tmp_path / "people.png"), 0.0).poses["people"]
    scores = sorted(person["score"] for person in everyone)
    # Halfway between two scores: no score is near the threshold.
    threshold = (scores[4] + scores[5]) / 2
    kept = app.answer(str(tmp_path / "people.png"), threshold).poses["people"]
    assert kept == [person for person in everyone if person["score"] > threshold]
    assert len(kept) == NUM_INSTANCES - 5


def test_a_bad_upload_is_a_message_not_an_exception(app, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    answer = app.answer(str(tmp_path / "notes.png"), 0.5)
    assert answer.drawing is None and answer.poses is None
    assert answer.message == ("**Cannot use this upload:** 'notes.png' is not an image (or not "
                              "in a format this app reads).")


@pytest.mark.slow  # exporting the tiny model takes about two minutes on a CPU
def test_the_onnx_file_gives_the_same_poses(app, tmp_path):
    from detectron2.modeling import build_model

    from grouppose.deploy import OnnxPosePredictor, export_onnx

    cfg = tiny_config()
    model = build_model(cfg).eval()
    model.load_state_dict(app.demo.predictor.model.state_dict())
    path = export_onnx(model, tmp_path / "tiny.onnx", dynamic=True, cfg=cfg)
    onnx_app = PoseApp(OnnxPosePredictor(path, score_threshold=0.0))
    people_image(tmp_path / "people.png")
    expected = app.answer(str(tmp_path / "people.png"), 0.0).poses
    poses = onnx_app.answer(str(tmp_path / "people.png"), 0.0).poses
    assert len(poses["people"]) == NUM_INSTANCES and poses["image"] == expected["image"]
    # float32 ONNX Runtime vs PyTorch: a few hundredths of a pixel (the JSON rounds to 0.01).
    np.testing.assert_allclose(
        [p["keypoints"] for p in poses["people"]], [p["keypoints"] for p in expected["people"]],
        atol=0.05,
    )


# ------------------------------------------------------------------------------------------
# Command line


def test_it_listens_on_this_machine_only_by_default():
    args = get_parser().parse_args(["--onnx", "m.onnx"])
    assert (args.host, args.port) == (DEFAULT_HOST, 7860) and DEFAULT_HOST == "127.0.0.1"


@pytest.mark.parametrize("args, error", [
    (["--onnx", "m.onnx", "--weights", "w.pth"],
     "--weights, --opts and --trust-pickle apply to --config-file"),
    (["--onnx", "m.onnx", "--confidence-threshold", "2"],
     "--confidence-threshold must be in [0, 1], got 2.0"),
    (["--onnx", "m.onnx", "--max-pixels", "0"], "--max-pixels must be positive, got 0"),
])
def test_command_line_refuses_bad_options_before_loading_anything(args, error, capsys):
    with pytest.raises(SystemExit):
        main(args)
    assert error in capsys.readouterr().err


def test_without_gradio_it_says_how_to_install_it(config_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails
    monkeypatch.delitem(sys.modules, "grouppose.app.page", raising=False)
    assert main(["--config-file", config_file]) == 1
    error = capsys.readouterr().err
    assert "the browser demo needs Gradio" in error
    assert 'pip install --no-build-isolation -e ".[app]"' in error


def test_a_model_that_cannot_load_is_one_error_line(tmp_path, capsys):
    pytest.importorskip("gradio", reason="the browser demo's extra is not installed")
    config = save_tiny_model(tmp_path)
    assert main(["--config-file", str(config), "--weights", str(tmp_path / "missing.pth")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read MODEL.WEIGHTS")


def test_help_starts_without_import_noise():
    result = subprocess.run([sys.executable, "-m", "grouppose.app", "--help"],
                            capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "--onnx" in result.stdout and result.stderr == ""


def test_gradio_analytics_are_off():
    pytest.importorskip("gradio", reason="the browser demo's extra is not installed")
    from gradio.analytics import analytics_enabled

    import grouppose.app.page  # noqa: F401 (sets the environment)

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and not analytics_enabled()


# ------------------------------------------------------------------------------------------
# The page in a real browser

# Without the background-networking flags Chromium keeps connecting to its services; the
# resolver rule makes every other host unreachable, so the page must work offline.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1400,1100",
    # A generated camera picture, and camera access granted without asking.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
)
# Seconds: startup imports torch, Detectron2 and Gradio; CPU inference of the tiny model.
APP_START_TIMEOUT = 180
PAGE_TIMEOUT = 120


def _browser():
    """(chromium, chromedriver) paths; skips when a part is missing."""
    pytest.importorskip("gradio", reason="the browser demo's extra is not installed "
                                         "(pip install -e \".[app]\")")
    pytest.importorskip("selenium", reason="selenium is not installed (make browser-test-deps)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromedriver are not installed (make browser-test-deps)")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(config_file, tmp_path_factory):
    """The URL of ``python -m grouppose.app`` serving the tiny model (default host)."""
    _browser()  # skips before starting the app when the browser is missing
    port = _free_port()
    with open(tmp_path_factory.mktemp("app") / "app.log", "w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "grouppose.app", "--config-file", config_file,
             "--port", str(port), "--confidence-threshold", "0"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(threads=2),
        )
        try:
            yield _wait_until_served(f"http://127.0.0.1:{port}/", process, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_served(url, process, log) -> str:
    """``url`` once the app answers there; fails with the app's output if it exits first."""
    deadline = time.monotonic() + APP_START_TIMEOUT
    while True:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"the app exited ({process.returncode}):\n{log.read()}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return url
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer at {url} in {APP_START_TIMEOUT} s")
            time.sleep(1)


@pytest.fixture
def browser(tmp_path):
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium_profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


def _upload(driver, path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    selector = (By.CSS_SELECTOR, "#upload input[type=file]")
    WebDriverWait(driver, PAGE_TIMEOUT).until(ec.presence_of_element_located(selector))
    driver.find_element(*selector).send_keys(str(path))


def _click_when_shown(driver, by, selector):
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(_):
        found = driver.find_elements(by, selector)
        return found[0] if found and found[0].is_displayed() else None

    WebDriverWait(driver, PAGE_TIMEOUT).until(shown).click()


def _downloaded_poses(driver) -> dict:
    """The JSON behind the page's download link."""
    from selenium.webdriver.common.by import By

    link = driver.find_element(By.CSS_SELECTOR, "#download a").get_attribute("href")
    return json.loads(urllib.request.urlopen(link, timeout=30).read())


def _wait_for_message(driver, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, PAGE_TIMEOUT).until(
        ec.text_to_be_present_in_element((By.ID, "message"), text)
    )


def test_page_draws_an_uploaded_image_and_offers_its_poses(browser, served_app, tmp_path):
    from selenium.webdriver.common.by import By

    image = people_image(tmp_path / "people.png")
    browser.get(served_app)
    _upload(browser, tmp_path / "people.png")
    _wait_for_message(browser, f"{NUM_INSTANCES} people")

    # Threshold 0: all TEST_TOPK poses of the tiny model.
    assert len(_downloaded_poses(browser)["people"]) == NUM_INSTANCES
    source = browser.find_element(By.CSS_SELECTOR, "#drawing img").get_attribute("src")
    data = np.frombuffer(urllib.request.urlopen(source, timeout=30).read(), np.uint8)
    drawing = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert drawing.shape == image.shape and (drawing != image).any()

    screenshot = os.environ.get("GROUPPOSE_APP_SCREENSHOT")  # e.g. docs/app_screenshot.png
    if screenshot:
        browser.save_screenshot(screenshot)
    # Everything the page loaded came from the app.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert loaded and all(name.startswith(served_app) for name in loaded), loaded

    # The slider's number box: threshold 1 keeps nobody (scores are probabilities).
    box = browser.find_element(By.CSS_SELECTOR, "#threshold input[type=number]")
    box.clear()
    box.send_keys("1")
    _wait_for_message(browser, "scoring above 1 (")
    assert browser.find_element(By.ID, "message").text.startswith("0 people")

    (tmp_path / "notes.jpg").write_text("not an image")
    browser.refresh()
    _upload(browser, tmp_path / "notes.jpg")
    _wait_for_message(browser, "'notes.jpg' is not an image")


def test_page_finds_the_poses_of_a_webcam_picture(browser, served_app):
    from selenium.webdriver.common.by import By

    browser.get(served_app)
    _click_when_shown(browser, By.XPATH,
                      "//*[@id='webcam']//*[contains(text(), 'Click to Access Webcam')]")
    _click_when_shown(browser, By.CSS_SELECTOR, "#webcam button[aria-label='capture photo']")
    _wait_for_message(browser, f"{NUM_INSTANCES} people")
    assert len(_downloaded_poses(browser)["people"]) == NUM_INSTANCES
