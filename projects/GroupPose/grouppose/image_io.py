"""Reading images for inference: any common file or array becomes an 8-bit BGR (H, W, 3) array.

Detectron2's predictors take 8-bit BGR images. Users have grayscale, RGBA and 16-bit images
too; these are converted (gray replicated to three channels, alpha dropped, 16-bit scaled to
8-bit) rather than rejected.
"""

import os
from typing import Union

import cv2
import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "as_bgr_uint8", "read_image"]

# Files a folder given to the demo is searched for (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Keeps colour images in colour, turns gray into BGR, drops alpha, keeps 16-bit depth and, unlike
# IMREAD_UNCHANGED, applies the EXIF orientation as Detectron2's own `read_image` does.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
_UINT16_TO_UINT8 = 255.0 / 65535.0


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an image file as 8-bit BGR.

    Returns:
        (H, W, 3) uint8 BGR.

    Raises:
        ValueError naming ``path`` when it is missing or cannot be decoded as an image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"image file not found: '{path}'")
    image = cv2.imread(path, _IMREAD_FLAGS)
    if image is None:
        raise ValueError(f"cannot decode '{path}' as an image (corrupt or unsupported format)")
    return as_bgr_uint8(image, name=path)


def as_bgr_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert an image array to 8-bit, three-channel BGR.

    Args:
        image: (H, W) gray, (H, W, 1) gray, (H, W, 3) BGR or (H, W, 4) BGRA; uint8, uint16
            (scaled by 255 / 65535) or float with values in [0, 255] (clipped).
        name: what to call the image in error messages (e.g. its file name).

    Returns:
        (H, W, 3) uint8 BGR; ``image`` itself when it already is one.

    Raises:
        ValueError naming ``name`` for any other shape or dtype.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"{name} must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with H, W > 0, "
            f"got {image.shape}"
        )
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.rint(image * _UINT16_TO_UINT8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.rint(np.clip(image, 0, 255)).astype(np.uint8)
    raise ValueError(f"{name} must be uint8, uint16 or float, got dtype {image.dtype}")
