"""Build and install GroupPose-D2.

The Python package ``grouppose`` lives in ``projects/GroupPose/grouppose`` (mapped the way
Detectron2 maps ``projects/PointRend/point_rend``). Its multi-scale deformable attention op is
compiled into ``grouppose._C``: always the CPU kernel, plus the CUDA kernel when CUDA is
available at build time or ``FORCE_CUDA=1`` is set.
"""

import glob
import os

from setuptools import find_packages, setup

PACKAGE_DIR = os.path.join("projects", "GroupPose", "grouppose")
CSRC_DIR = os.path.join(PACKAGE_DIR, "layers", "csrc")


def _want_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def get_extensions():
    """The ``grouppose._C`` extension: C++ sources always, CUDA sources when wanted."""
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join(CSRC_DIR, "*.cpp")))
    if not sources:
        return []
    # No -std flag: torch.utils.cpp_extension picks the C++ standard its headers need (C++20).
    # at::parallel_for uses OpenMP in PyTorch's CPU builds; compile our kernel the same way.
    # -fno-trapping-math (the kernels never read floating-point exception flags) lets GCC
    # vectorise the CPU forward's per-point corner arithmetic: its float comparisons and
    # float -> int conversions may otherwise not be executed speculatively.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp", "-fno-trapping-math"]}
    define_macros = []
    extension = CppExtension
    if _want_cuda():
        extension = CUDAExtension
        sources += sorted(glob.glob(os.path.join(CSRC_DIR, "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3"]
    return [
        extension(
            "grouppose._C",
            sources,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]


def get_cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=False)}


setup(
    name="grouppose",
    version="0.1.0",
    author="GroupPose-D2 contributors",
    url="https://github.com/grouppose-d2/grouppose-d2",
    description="Group Pose (ICCV 2023) end-to-end multi-person pose estimation for Detectron2",
    license="Apache-2.0",
    python_requires=">=3.9",
    package_dir={"grouppose": PACKAGE_DIR},
    packages=["grouppose"]
    + ["grouppose." + p for p in find_packages(PACKAGE_DIR)],
    package_data={"grouppose": ["layers/csrc/*"]},
    install_requires=["scipy", "opencv-python-headless", "tqdm"],
    extras_require={
        "test": ["pytest", "ruff"],
        # ONNX export (onnx, onnxscript) and ONNX Runtime inference (grouppose.deploy); the
        # predictor alone needs only numpy, Pillow and onnxruntime.
        "deploy": ["numpy", "Pillow", "onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.5"],
        # Tracking (grouppose.tracking.PoseTracker) and its benchmark (motmetrics). norfair
        # itself is installed without its dependencies by `make setup` (see the Makefile):
        # its metadata pins numpy < 2, which its code does not need; these are the others.
        "track": ["filterpy>=1.4.5", "rich>=9.10,<15", "motmetrics>=1.4", "matplotlib"],
        # The browser demo (python -m grouppose.app): Gradio 6 (theme and fonts served locally).
        "app": ["gradio>=6"],
    },
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
)
