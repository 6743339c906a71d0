"""Reading training / evaluation images: any common file becomes an 8-bit (H, W, 3) array.

Detectron2's ``read_image`` clips 16-bit grayscale images to 255 (almost all white) and lets
decoding errors escape as bare PIL exceptions; OpenCV (``grouppose.image_io``, used for
inference) decodes a truncated JPEG into a half-gray image without an error. Training data needs
both cases handled, so this reader decodes with PIL, which raises on truncated files, and:
- converts grayscale, palette, CMYK and RGBA images to three channels (alpha dropped);
- scales 16-bit images (PIL modes ``I;16*`` and ``I``) to 8 bits by 255 / 65535;
- applies the EXIF orientation, as Detectron2 does;
- raises a ``ValueError`` naming the file for a missing, truncated or undecodable file.
"""

import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

__all__ = ["read_dataset_image"]

SUPPORTED_FORMATS = ("RGB", "BGR")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_UINT16_TO_UINT8 = 255.0 / 65535.0


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image scaled into an 8-bit ``L`` image."""
    values = np.asarray(image, dtype=np.float64) * _UINT16_TO_UINT8
    return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8), mode="L")


def read_dataset_image(file_name: str, image_format: str) -> np.ndarray:
    """Read an image file for the model.

    Args:
        file_name: path of the image (anything Detectron2's PathManager opens).
        image_format: "RGB" or "BGR" (cfg.INPUT.FORMAT).

    Returns:
        (H, W, 3) uint8 array in ``image_format`` channel order.

    Raises:
        ValueError naming ``file_name`` when it is missing, truncated or not an image, and
        naming ``image_format`` when it is not supported.
    """
    if image_format not in SUPPORTED_FORMATS:
        raise ValueError(f"image_format must be one of {SUPPORTED_FORMATS}, got {image_format!r}")
    try:
        with PathManager.open(file_name, "rb") as f:
            image = ImageOps.exif_transpose(Image.open(f))
            if image.mode in _SIXTEEN_BIT_MODES:
                image = _to_eight_bit(image)
            elif image.mode == "F":
                raise ValueError("floating-point (PIL mode 'F') images are not supported")
            # Decodes the whole file (PIL is lazy), so truncation is detected here.
            return convert_PIL_to_numpy(image, image_format)
    except FileNotFoundError as e:
        raise ValueError(f"image file not found: '{file_name}'") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports corrupt and truncated files as OSError (UnidentifiedImageError included).
        raise ValueError(f"cannot read image '{file_name}': {e}") from e
