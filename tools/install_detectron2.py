#!/usr/bin/env python
"""Install detectron2 into the current Python environment.

Detectron2 publishes no wheels on any package registry, so this script picks the first
strategy that applies and prints which one it took:

1. ``keep``   -- detectron2 is already importable and usable (e.g. built from source): keep it.
2. ``source`` -- ``DETECTRON2_SOURCE`` is set to a local checkout or a pip-installable URL:
   ``pip install --no-build-isolation`` it (torch must already be installed).
3. ``pypi``   -- build detectron2 0.6 from the registry sdist ``pb1-detectron2==0.6``. That
   sdist holds upstream v0.6's Python files but not its C++ sources, so its own build fails.
   We repackage the Python code alone as a distribution named ``detectron2`` (version
   ``0.6+pypi.python.only.<PATCH_REVISION>``) with the sdist's own dependency list, after the
   minimal changes that let it import without its C++ ops and under current Pillow and
   setuptools:

   * ``from detectron2 import _C`` (layers/, evaluation/fast_eval_api.py) becomes a guarded
     import that falls back to an object raising a clear error when a C++ op is called;
     ``COCOeval_opt`` falls back to pycocotools' ``COCOeval`` (same results, slower);
   * ``Image.LINEAR`` (removed in Pillow 10; it was an alias) becomes ``Image.BILINEAR``;
   * ``model_zoo.get_config_file`` finds its configs with ``importlib.resources`` instead of
     ``pkg_resources`` (no longer shipped by setuptools), the only use of ``pkg_resources``,
     so ``from detectron2 import model_zoo`` imports;
   * the model-zoo configs (``detectron2/model_zoo/configs/``: yaml and LazyConfig ``.py``,
     all in the sdist) go into the wheel: ``setup.py`` collected them from a top-level
     ``configs/`` that only a git checkout has, so the sdist's wheel had none. The built wheel
     is checked to hold every one of them.

   The built wheel is cached under ``.cache/detectron2/``, named by its version, so that
   re-runs are instant. ``PATCH_REVISION`` is part of that version: bumping it whenever these
   changes change makes a new installer build a new wheel, and replace an installed build of
   an older revision (which the ``keep`` strategy would otherwise keep).

The environment is then checked by importing the modules GroupPose-D2 uses.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "detectron2"

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
# Bump PATCH_REVISION whenever the changes made to the sdist change: the version names the
# cached wheel, so a stale wheel is not reused, and an installed older build is replaced.
PATCH_REVISION = 2
PYTHON_ONLY_PREFIX = "0.6+pypi.python.only"
PYTHON_ONLY_VERSION = f"{PYTHON_ONLY_PREFIX}.{PATCH_REVISION}"

# A model-zoo config that must resolve once installed (GroupPose's keypoint task's baseline).
MODEL_ZOO_PROBE = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"

# detectron2 needs OpenCV but leaves its installation to the user; headless suits servers and CI.
OPENCV = "opencv-python-headless"

# The modules GroupPose-D2 needs; importing them proves an installation usable.
REQUIRED_MODULES = (
    "detectron2.modeling",
    "detectron2.engine",
    "detectron2.evaluation",
    "detectron2.data.transforms",
    "detectron2.utils.visualizer",
)

# Stand-in for the missing extension, written into the python-only build. Attribute access
# raises, so only code that really calls a C++ op fails, and it says why.
PYTHON_ONLY_MODULE = '''"""Stand-in for ``detectron2._C`` in a python-only build (see GroupPose-D2's
tools/install_detectron2.py): detectron2's C++/CUDA ops are not compiled in this installation."""


class _MissingCOps:
    def __getattr__(self, name):
        if name.startswith("__"):  # introspection (hasattr, copy, pickle) must not trip
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2._C.{name} is unavailable: this detectron2 is a python-only build "
            "without C++ ops. Build detectron2 from source to use it."
        )


MISSING_C_OPS = _MissingCOps()
'''

GUARDED_C_IMPORT = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # python-only build: C++ ops unavailable\n"
    "    from detectron2._python_only import MISSING_C_OPS as _C\n"
)

# model_zoo.get_config_file, before and after: importlib.resources (Python >= 3.9) locates the
# package's data as pkg_resources did, without depending on setuptools at run time.
MODEL_ZOO_REPLACEMENTS = {
    "import pkg_resources\n": "import importlib.resources\n",
    (
        "    cfg_file = pkg_resources.resource_filename(\n"
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
        "    )\n"
    ): (
        "    # python-only build: setuptools no longer ships pkg_resources\n"
        '    package = importlib.resources.files("detectron2.model_zoo")\n'
        '    cfg_file = str(package / "configs" / config_path)\n'
    ),
}

PKG_RESOURCES_USE = re.compile(r"^\s*(import|from) pkg_resources\b|\bpkg_resources\.", re.M)

FAST_EVAL_FALLBACK = (
    "\n\n# python-only build: without the C++ fast path, use pycocotools' own implementation.\n"
    "from detectron2._python_only import MISSING_C_OPS  # noqa: E402\n"
    "\n"
    "if _C is MISSING_C_OPS:\n"
    "    COCOeval_opt = COCOeval  # noqa: F811\n"
)


def log(message: str) -> None:
    print(f"[install_detectron2] {message}", flush=True)


def choose_strategy(env: Mapping[str, str], detectron2_usable: bool) -> str:
    """Return ``"keep"``, ``"source"`` or ``"pypi"`` following the order in the module doc."""
    if detectron2_usable:
        return "keep"
    if env.get("DETECTRON2_SOURCE", "").strip():
        return "source"
    return "pypi"


def check_detectron2(python: str = sys.executable) -> Optional[str]:
    """Import the required detectron2 modules in a fresh interpreter.

    Returns:
        None when all import, else the error text (last line of the traceback).
    """
    code = "; ".join(f"import {m}" for m in REQUIRED_MODULES)
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def patch_python_only(package_dir: Path) -> list[str]:
    """Apply the python-only compatibility changes to an unpacked ``detectron2`` package.

    Args:
        package_dir: the ``detectron2`` folder of the sdist.
    Returns:
        The package-relative paths of the changed files.
    """
    changed = []
    (package_dir / "_python_only.py").write_text(PYTHON_ONLY_MODULE)
    changed.append("_python_only.py")
    for path in sorted(package_dir.rglob("*.py")):
        text = path.read_text()
        new = re.sub(r"^from detectron2 import _C\n", GUARDED_C_IMPORT, text, flags=re.M)
        if path.name == "fast_eval_api.py" and new != text:
            new += FAST_EVAL_FALLBACK
        new = re.sub(r"\bImage\.LINEAR\b", "Image.BILINEAR", new)
        if new != text:
            path.write_text(new)
            changed.append(str(path.relative_to(package_dir)))
    return changed


def replace_exactly(path: Path, replacements: Mapping[str, str]) -> None:
    """Apply literal replacements to a file, refusing one whose text is not there."""
    text = path.read_text()
    for old, new in replacements.items():
        if old not in text:
            raise RuntimeError(f"{path}: expected to find {old!r}; is this the 0.6 sdist?")
        text = text.replace(old, new)
    path.write_text(text)


def patch_model_zoo(package_dir: Path) -> None:
    """Make ``detectron2.model_zoo`` independent of ``pkg_resources``.

    Args:
        package_dir: the ``detectron2`` folder of the sdist.
    """
    replace_exactly(package_dir / "model_zoo" / "model_zoo.py", MODEL_ZOO_REPLACEMENTS)
    # Another use would fail only when reached, so refuse to build rather than ship it.
    users = [str(p.relative_to(package_dir)) for p in sorted(package_dir.rglob("*.py"))
             if PKG_RESOURCES_USE.search(p.read_text())]
    if users:
        raise RuntimeError(f"pkg_resources is still used by {', '.join(users)}")


def patch_setup_py(setup_py: Path) -> None:
    """Rename the distribution to ``detectron2``, drop its (absent) C++ extension and package
    the model-zoo configs that the sdist holds under ``detectron2/model_zoo/configs/``."""
    replace_exactly(setup_py, {
        'name="pb1-detectron2"': 'name="detectron2"',
        "version=get_version()": f'version="{PYTHON_ONLY_VERSION}"',
        "ext_modules=get_extensions(),": "",
        'cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},': "",
        # get_model_zoo_configs() globs a top-level configs/, which only a git checkout has.
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},':
            'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    })


def model_zoo_configs(package_dir: Path) -> set[str]:
    """The wheel paths (``detectron2/model_zoo/configs/...``) of the sdist's model-zoo configs."""
    configs = package_dir / "model_zoo" / "configs"
    return {str(p.relative_to(package_dir.parent)) for p in configs.rglob("*")
            if p.suffix in (".yaml", ".py")}


def check_wheel_has(wheel: Path, expected: set[str]) -> None:
    """Refuse a wheel that lacks some of ``expected`` (paths inside the wheel)."""
    with zipfile.ZipFile(wheel) as archive:
        missing = sorted(expected - set(archive.namelist()))
    if missing:
        raise RuntimeError(f"{wheel.name} lacks {len(missing)} model-zoo configs, e.g. "
                           f"{missing[0]}")


def download_sdist(dest: Path, index_url: Optional[str] = None) -> Path:
    """Fetch the sdist through the package index's JSON simple API (PEP 691) and check it.

    ``pip download`` cannot be used: it prepares the sdist's metadata, which current pip
    rejects (the sdist declares a direct-URL dependency in an extra).
    """
    index_url = (index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")
    log(f"downloading the sdist {SDIST_FILE} from {index_url}")
    request = urllib.request.Request(
        f"{index_url}/{SDIST_NAME}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    url = next((f["url"] for f in files if f["filename"] == SDIST_FILE), None)
    if url is None:
        raise RuntimeError(f"{SDIST_FILE} is not listed by {index_url}/{SDIST_NAME}/")
    path = dest / SDIST_FILE
    with urllib.request.urlopen(urllib.parse.urljoin(request.full_url, url), timeout=300) as r:
        path.write_bytes(r.read())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{SDIST_FILE}: sha256 {digest} differs from the expected "
                           f"{SDIST_SHA256}; refusing to build it")
    return path


def build_python_only_wheel(cache_dir: Path) -> Path:
    """Download the sdist, patch it, and build the python-only wheel into ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sdist = download_sdist(tmp_path)
        with tarfile.open(sdist) as tar:
            # the "data" filter (refuses absolute paths and links outside) where Python has it
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp_path, **safe)
        source = tmp_path / f"{SDIST_NAME}-{SDIST_VERSION}"
        package = source / "detectron2"
        changed = patch_python_only(package)
        patch_model_zoo(package)
        changed.append("model_zoo/model_zoo.py")
        log(f"patched {len(changed)} files: {', '.join(changed)}")
        patch_setup_py(source / "setup.py")
        shutil.rmtree(source / "pb1_detectron2.egg-info", ignore_errors=True)
        configs = model_zoo_configs(package)
        # Built outside the cache, so that a failed check leaves no wheel to be reused.
        pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
            str(source))
        (wheel,) = (tmp_path / "dist").glob("*.whl")
        check_wheel_has(wheel, configs)
        log(f"the wheel holds the {len(configs)} model-zoo configs")
        shutil.move(str(wheel), cache_dir / wheel.name)
    return cached_wheel(cache_dir)


def cached_wheel(cache_dir: Path) -> Optional[Path]:
    """The cached wheel of this installer's version (PATCH_REVISION), if built already."""
    wheels = sorted(cache_dir.glob(f"detectron2-{PYTHON_ONLY_VERSION}-*.whl"))
    return wheels[-1] if wheels else None


def stale_python_only_build() -> Optional[str]:
    """The installed detectron2's version if it is a python-only build of another revision."""
    try:
        version = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:
        return None
    if version.startswith(PYTHON_ONLY_PREFIX) and version != PYTHON_ONLY_VERSION:
        return version
    return None


def check_model_zoo(python: str = sys.executable) -> Optional[str]:
    """Resolve a model-zoo config in a fresh interpreter; None when it works, else the error."""
    code = (
        "import os; from detectron2 import model_zoo; "
        f"assert os.path.isfile(model_zoo.get_config_file({MODEL_ZOO_PROBE!r}))"
    )
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


def install(strategy: str, env: Mapping[str, str], cache_dir: Path) -> None:
    if strategy == "keep":
        log("detectron2 is already installed and usable: keeping it")
    elif strategy == "source":
        source = env["DETECTRON2_SOURCE"].strip()
        log(f"installing detectron2 from DETECTRON2_SOURCE={source}")
        pip("install", "--no-build-isolation", source, OPENCV)
    else:
        wheel = cached_wheel(cache_dir)
        if wheel is None:
            log(f"building detectron2 {PYTHON_ONLY_VERSION} from the PyPI sdist "
                f"{SDIST_NAME}=={SDIST_VERSION}")
            wheel = build_python_only_wheel(cache_dir)
        else:
            log(f"installing the cached python-only detectron2 wheel {wheel.name}")
        # --force-reinstall: replace an unusable installation of the same version.
        pip("install", "--quiet", "--no-deps", "--force-reinstall", str(wheel))
        pip("install", "--quiet", str(wheel), OPENCV)  # its dependencies


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the python-only wheel is cached")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the strategy that would be taken and exit")
    args = parser.parse_args(argv)

    error = check_detectron2()
    stale = stale_python_only_build()
    if error is not None:
        log(f"detectron2 not usable here ({error})")
    elif stale is not None:
        log(f"detectron2 {stale} is a python-only build older than {PYTHON_ONLY_VERSION}")
    strategy = choose_strategy(os.environ, detectron2_usable=error is None and stale is None)
    log(f"strategy: {strategy}")
    if args.dry_run:
        return 0
    install(strategy, os.environ, args.cache_dir)
    error = check_detectron2()
    if error is not None:
        log(f"FAILED: detectron2 is still not usable: {error}")
        return 1
    log("detectron2 OK: " + ", ".join(REQUIRED_MODULES) + " import")
    if strategy == "pypi":  # the model zoo is what this build patches; other builds are theirs
        error = check_model_zoo()
        if error is not None:
            log(f"FAILED: detectron2.model_zoo does not resolve {MODEL_ZOO_PROBE}: {error}")
            return 1
        log(f"detectron2.model_zoo OK: {MODEL_ZOO_PROBE} resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
