"""The detectron2 installer's decisions and compatibility changes (no network access)."""

import functools
import hashlib
import http.server
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tools import install_detectron2 as installer

WHEEL_NAME = f"detectron2-{installer.PYTHON_ONLY_VERSION}-py3-none-any.whl"


@pytest.mark.parametrize(
    "env, usable, expected",
    [
        ({}, True, "keep"),
        ({"DETECTRON2_SOURCE": "/src/detectron2"}, True, "keep"),
        ({"DETECTRON2_SOURCE": "/src/detectron2"}, False, "source"),
        ({"DETECTRON2_SOURCE": "git+https://example.org/d2.git"}, False, "source"),
        ({"DETECTRON2_SOURCE": "  "}, False, "pypi"),
        ({}, False, "pypi"),
    ],
)
def test_choose_strategy(env, usable, expected):
    assert installer.choose_strategy(env, detectron2_usable=usable) == expected


@pytest.fixture
def pip_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(installer, "pip", lambda *args: calls.append(args))
    return calls


def test_install_from_source(pip_calls, tmp_path):
    installer.install("source", {"DETECTRON2_SOURCE": "/src/d2 "}, tmp_path)
    assert pip_calls == [("install", "--no-build-isolation", "/src/d2", installer.OPENCV)]


def test_install_keep_does_nothing(pip_calls, tmp_path):
    installer.install("keep", {}, tmp_path)
    assert pip_calls == []


def test_install_pypi_uses_cached_wheel(pip_calls, tmp_path, monkeypatch):
    wheel = tmp_path / WHEEL_NAME
    wheel.touch()

    def no_build(cache_dir):
        raise AssertionError("a cached wheel must not be rebuilt")

    monkeypatch.setattr(installer, "build_python_only_wheel", no_build)
    installer.install("pypi", {}, tmp_path)
    assert [call[-1] for call in pip_calls] == [str(wheel), installer.OPENCV]
    assert "--force-reinstall" in pip_calls[0]


def test_install_pypi_builds_when_not_cached(pip_calls, tmp_path, monkeypatch):
    # A wheel of an older patch revision is not reused: a changed installer rebuilds.
    (tmp_path / "detectron2-0.6+pypi.python.only-py3-none-any.whl").touch()
    built = []

    def fake_build(cache_dir):
        wheel = cache_dir / WHEEL_NAME
        wheel.touch()
        built.append(wheel)
        return wheel

    monkeypatch.setattr(installer, "build_python_only_wheel", fake_build)
    installer.install("pypi", {}, tmp_path)
    assert len(built) == 1
    assert str(built[0]) in pip_calls[0]


def test_patch_python_only(tmp_path):
    package = tmp_path / "detectron2"
    (package / "layers").mkdir(parents=True)
    (package / "evaluation").mkdir()
    (package / "data").mkdir()
    (package / "layers" / "deform_conv.py").write_text(
        "import torch\nfrom detectron2 import _C\n\ndef f():\n    return _C.deform_conv\n"
    )
    (package / "evaluation" / "fast_eval_api.py").write_text(
        "from pycocotools.cocoeval import COCOeval\nfrom detectron2 import _C\n\n"
        "class COCOeval_opt(COCOeval):\n    pass\n"
    )
    (package / "data" / "transform.py").write_text(
        "from PIL import Image\ndef g(interp=Image.LINEAR):\n    return interp\n"
    )
    (package / "untouched.py").write_text("x = 1\n")

    changed = installer.patch_python_only(package)

    assert sorted(changed) == sorted([
        "_python_only.py", "data/transform.py", "evaluation/fast_eval_api.py",
        "layers/deform_conv.py",
    ])
    assert "Image.BILINEAR" in (package / "data" / "transform.py").read_text()
    assert "Image.LINEAR" not in (package / "data" / "transform.py").read_text()
    fast_eval = (package / "evaluation" / "fast_eval_api.py").read_text()
    assert "COCOeval_opt = COCOeval" in fast_eval
    # The patched modules import, and fail clearly only when a C++ op is called. A fresh
    # interpreter keeps the installed detectron2 out of the way.
    (package / "__init__.py").touch()
    (package / "layers" / "__init__.py").touch()
    code = (
        "import detectron2.layers.deform_conv as m\n"
        "assert not hasattr(m._C, '__file__')\n"
        "m.f()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(tmp_path)})
    assert "RuntimeError: detectron2._C.deform_conv is unavailable" in result.stderr
    assert "python-only build" in result.stderr


def test_patch_setup_py(tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text(textwrap.dedent("""\
        setup(
            name="pb1-detectron2",
            version=get_version(),
            ext_modules=get_extensions(),
            cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},
            package_data={"detectron2.model_zoo": get_model_zoo_configs()},
        )
    """))
    installer.patch_setup_py(setup_py)
    text = setup_py.read_text()
    assert 'name="detectron2"' in text
    assert f'version="{installer.PYTHON_ONLY_VERSION}"' in text
    assert "get_extensions" not in text and "BuildExtension" not in text
    assert '["configs/**/*.yaml", "configs/**/*.py"]' in text
    assert "get_model_zoo_configs()" not in text


# model_zoo.py of the 0.6 sdist, abridged to the lines the patch touches.
SDIST_MODEL_ZOO = """\
import os
import pkg_resources


def get_config_file(config_path):
    cfg_file = pkg_resources.resource_filename(
        "detectron2.model_zoo", os.path.join("configs", config_path)
    )
    if not os.path.exists(cfg_file):
        raise RuntimeError("{} not available in Model Zoo!".format(config_path))
    return cfg_file
"""


def _fake_model_zoo(root):
    package = root / "detectron2"
    (package / "model_zoo" / "configs" / "COCO-Keypoints").mkdir(parents=True)
    (package / "__init__.py").touch()
    (package / "model_zoo" / "__init__.py").touch()
    (package / "model_zoo" / "model_zoo.py").write_text(SDIST_MODEL_ZOO)
    (package / "model_zoo" / "configs" / "COCO-Keypoints" / "kp.yaml").write_text("a: 1\n")
    return package


def test_patch_model_zoo_resolves_configs_without_pkg_resources(tmp_path):
    package = _fake_model_zoo(tmp_path)
    installer.patch_model_zoo(package)
    patched = (package / "model_zoo" / "model_zoo.py").read_text()
    assert "importlib.resources" in patched
    assert not installer.PKG_RESOURCES_USE.search(patched)
    # A fresh interpreter where importing pkg_resources fails, as under setuptools >= 81.
    (tmp_path / "pkg_resources.py").write_text("raise ImportError('no pkg_resources')\n")
    code = (
        "from detectron2.model_zoo import model_zoo as m\n"
        "print(m.get_config_file('COCO-Keypoints/kp.yaml'))\n"
        "m.get_config_file('COCO-Keypoints/absent.yaml')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(tmp_path)})
    expected = package / "model_zoo" / "configs" / "COCO-Keypoints" / "kp.yaml"
    assert result.stdout.strip() == str(expected)
    assert "RuntimeError: COCO-Keypoints/absent.yaml not available in Model Zoo!" in result.stderr


def test_patch_model_zoo_refuses_an_unknown_layout_or_another_use(tmp_path):
    package = _fake_model_zoo(tmp_path)
    (package / "model_zoo" / "model_zoo.py").write_text("import os\n")
    with pytest.raises(RuntimeError, match="is this the 0.6 sdist"):
        installer.patch_model_zoo(package)

    package = _fake_model_zoo(tmp_path / "other")
    (package / "other.py").write_text("from pkg_resources import resource_filename\n")
    with pytest.raises(RuntimeError, match="still used by other.py"):
        installer.patch_model_zoo(package)


def test_model_zoo_configs_and_wheel_check(tmp_path):
    package = _fake_model_zoo(tmp_path)
    (package / "model_zoo" / "configs" / "common").mkdir()
    (package / "model_zoo" / "configs" / "common" / "optim.py").touch()
    (package / "model_zoo" / "configs" / "README.md").touch()
    configs = installer.model_zoo_configs(package)
    assert configs == {"detectron2/model_zoo/configs/COCO-Keypoints/kp.yaml",
                       "detectron2/model_zoo/configs/common/optim.py"}

    wheel = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("detectron2/model_zoo/configs/COCO-Keypoints/kp.yaml", "a: 1\n")
    with pytest.raises(RuntimeError, match="lacks 1 model-zoo configs.*optim.py"):
        installer.check_wheel_has(wheel, configs)
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("detectron2/model_zoo/configs/common/optim.py", "")
    installer.check_wheel_has(wheel, configs)


@pytest.mark.parametrize(
    "installed, stale",
    [
        (None, None),
        ("0.6", None),  # upstream, built from source: not ours to replace
        ("0.6+pypi.python.only", "0.6+pypi.python.only"),  # before PATCH_REVISION existed
        (installer.PYTHON_ONLY_VERSION, None),
    ],
)
def test_stale_python_only_build(monkeypatch, installed, stale):
    def version(name):
        assert name == "detectron2"
        if installed is None:
            raise installer.importlib.metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(installer.importlib.metadata, "version", version)
    assert installer.stale_python_only_build() == stale


def test_patch_setup_py_refuses_unknown_layout(tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text("setup(name='something-else')\n")
    with pytest.raises(RuntimeError, match="pb1-detectron2"):
        installer.patch_setup_py(setup_py)


def test_installed_detectron2_is_usable():
    assert installer.check_detectron2() is None


@pytest.mark.skipif(not os.environ.get("GROUPPOSE_DETECTRON2"),
                    reason="GROUPPOSE_DETECTRON2 (upstream or python-only) not set")
def test_detectron2_is_the_build_asked_for():
    """`make test-upstream` sets GROUPPOSE_DETECTRON2=upstream: prove the suite runs on it."""
    import detectron2

    kind = os.environ["GROUPPOSE_DETECTRON2"]
    # Installed into this environment, not found on a path that shadows it.
    assert Path(detectron2.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())
    version = importlib.metadata.version("detectron2")
    python_only = importlib.util.find_spec("detectron2._python_only") is not None
    if kind == "python-only":
        assert python_only and version == installer.PYTHON_ONLY_VERSION
    elif kind == "upstream":
        assert not python_only and "python.only" not in version
        from detectron2 import _C  # its C++ ops were compiled

        assert Path(_C.__file__).suffix == ".so"
        # Newer than 0.6 (the last release): ViT backbone (ViTDet) arrived in main after it.
        assert importlib.util.find_spec("detectron2.modeling.backbone.vit") is not None
    else:
        pytest.fail(f"GROUPPOSE_DETECTRON2={kind!r}: expected 'upstream' or 'python-only'")


KEYPOINT_RCNN = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"


def test_installed_model_zoo_serves_its_configs():
    python_only = importlib.util.find_spec("detectron2._python_only") is not None
    if not python_only and importlib.util.find_spec("pkg_resources") is None:
        # Upstream detectron2 still imports pkg_resources there; its own bug, not this build's.
        pytest.skip("this detectron2's model_zoo needs pkg_resources, which setuptools>=81 "
                    "no longer ships")
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    path = model_zoo.get_config_file(KEYPOINT_RCNN)
    assert path.endswith(KEYPOINT_RCNN) and Path(path).is_file()
    cfg = get_cfg()
    cfg.merge_from_file(path)  # follows _BASE_ to ../Base-RCNN-FPN.yaml, packaged too
    assert cfg.MODEL.KEYPOINT_ON and cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == 17
    assert model_zoo.get_config(KEYPOINT_RCNN).MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    # LazyConfig (.py) configs are packaged too, with the common/ modules they import.
    lazy = model_zoo.get_config("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py")
    assert lazy.model.roi_heads.num_classes == 1
    with pytest.raises(RuntimeError, match="not available in Model Zoo"):
        model_zoo.get_config_file("COCO-Keypoints/no_such_config.yaml")


def test_extent_transform_default_interp_works_with_installed_pillow():
    # ExtentTransform's default interpolation was Image.LINEAR, removed in Pillow 10.
    from detectron2.data.transforms import ExtentTransform

    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    out = ExtentTransform(src_rect=(0, 0, 10, 10), output_size=(5, 5)).apply_image(image)
    assert out.shape == (5, 5, 3)


def test_python_only_build_falls_back_to_pycocotools():
    if importlib.util.find_spec("detectron2._python_only") is None:
        pytest.skip("detectron2 here is not the python-only build")
    import detectron2.layers  # noqa: F401  (imported _C at import time before the patch)
    from detectron2.evaluation import COCOEvaluator  # noqa: F401
    from detectron2.evaluation.fast_eval_api import COCOeval_opt
    from pycocotools.cocoeval import COCOeval

    assert COCOeval_opt is COCOeval


@pytest.fixture
def local_index(tmp_path):
    """A PEP 691 index on loopback serving one sdist whose bytes the test chooses."""
    root = tmp_path / "index"
    (root / installer.SDIST_NAME).mkdir(parents=True)
    listing = {"files": [{"filename": installer.SDIST_FILE, "url": f"../{installer.SDIST_FILE}"}]}
    (root / installer.SDIST_NAME / "index.html").write_text(json.dumps(listing))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_sdist_refuses_a_wrong_checksum(local_index, tmp_path):
    root, url = local_index
    (root / installer.SDIST_FILE).write_bytes(b"not the detectron2 sdist")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(RuntimeError, match="sha256"):
        installer.download_sdist(dest, index_url=url)


def test_download_sdist_accepts_the_pinned_file(local_index, tmp_path, monkeypatch):
    root, url = local_index
    payload = b"pretend sdist"
    (root / installer.SDIST_FILE).write_bytes(payload)
    monkeypatch.setattr(installer, "SDIST_SHA256", hashlib.sha256(payload).hexdigest())
    dest = tmp_path / "dest"
    dest.mkdir()
    assert installer.download_sdist(dest, index_url=url).read_bytes() == payload
