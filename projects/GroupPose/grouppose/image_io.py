"""Reading images: any common file or array becomes an 8-bit, three-channel image.

One reader for training, evaluation and inference. Detectron2's ``read_image`` clips 16-bit
grayscale images to 255 (almost all white) and lets decoding errors escape as bare PIL
exceptions; OpenCV's ``imread`` decodes a truncated JPEG into a half-gray image without an
error. So files are decoded with PIL, which raises on truncated files, and:
- grayscale, palette, CMYK and RGBA images become three channels (alpha dropped);
- 16-bit images (PIL modes ``I;16*`` and ``I``) are scaled to 8 bits by 255 / 65535;
- the EXIF orientation is applied, as Detectron2 does;
- a missing, truncated or undecodable file raises an ``UnreadableImageError`` (a ``ValueError``)
  naming the file.
Arrays given to the predictor get the same conversions (``as_bgr_uint8``).

Files are opened with Detectron2's ``PathManager`` (URLs, registered path prefixes) where
Detectron2 is installed, and as local files otherwise: this module also serves the ONNX Runtime
predictor (``grouppose.deploy``), which runs without torch and Detectron2.
"""

import os
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps

try:
    from detectron2.utils.file_io import PathManager
except ModuleNotFoundError:
    PathManager = None

__all__ = [
    "IMAGE_EXTENSIONS", "ImageLike", "UnreadableImageError", "as_bgr_uint8", "read_image",
    "to_bgr_uint8",
]

# Files a folder given to the demo is searched for (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# What the predictors take: an image file or an array.
ImageLike = Union[str, os.PathLike, np.ndarray]
SUPPORTED_FORMATS = ("RGB", "BGR")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_UINT16_TO_UINT8 = 255.0 / 65535.0


class UnreadableImageError(ValueError):
    """An image file is missing, empty, truncated or not an image."""


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image scaled into an 8-bit ``L`` image."""
    values = np.asarray(image, dtype=np.float64) * _UINT16_TO_UINT8
    return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8), mode="L")


def _open(file_name: str) -> BinaryIO:
    """``file_name`` opened for reading bytes, through Detectron2's PathManager if installed."""
    if PathManager is None:
        return open(file_name, "rb")
    return PathManager.open(file_name, "rb")


def read_image(file_name: Union[str, os.PathLike], image_format: str = "BGR") -> np.ndarray:
    """Read an image file.

    Args:
        file_name: path of the image (anything Detectron2's PathManager opens).
        image_format: "RGB" or "BGR" (cfg.INPUT.FORMAT; Detectron2's predictors take BGR).

    Returns:
        (H, W, 3) uint8 array in ``image_format`` channel order.

    Raises:
        UnreadableImageError naming ``file_name`` when it is missing, empty, truncated or not an
        image; ValueError naming ``image_format`` when it is not supported.
    """
    file_name = os.fspath(file_name)
    if image_format not in SUPPORTED_FORMATS:
        raise ValueError(f"image_format must be one of {SUPPORTED_FORMATS}, got {image_format!r}")
    try:
        with _open(file_name) as f:
            image = ImageOps.exif_transpose(Image.open(f))
            if image.mode in _SIXTEEN_BIT_MODES:
                image = _to_eight_bit(image)
            elif image.mode == "F":
                raise ValueError("floating-point (PIL mode 'F') images are not supported")
            # Decodes the whole file (PIL is lazy), so truncation is detected here.
            rgb = np.asarray(image.convert("RGB"))
            return rgb[:, :, ::-1] if image_format == "BGR" else rgb
    except FileNotFoundError as e:
        raise UnreadableImageError(f"image file not found: '{file_name}'") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports corrupt and truncated files as OSError (UnidentifiedImageError included).
        raise UnreadableImageError(f"cannot read image '{file_name}': {e}") from e


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


def to_bgr_uint8(image: ImageLike) -> np.ndarray:
    """An image file (``read_image``) or array (``as_bgr_uint8``) -> (H, W, 3) uint8 BGR."""
    return as_bgr_uint8(image) if isinstance(image, np.ndarray) else read_image(image)
