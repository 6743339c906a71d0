"""Training images that cannot be read: replaced, reported once, counted, and limited.

On a large set some files are missing, empty, truncated or not images at all, and a 60-epoch run
should not end at the first one. While training (``grouppose.engine.data_stream``), an image
whose file ``grouppose.image_io.read_image`` cannot read is replaced by the next image of the
set, with the seed of the replaced position and attempt, so a resumed run still sees the data of
an uninterrupted one. The replacement sample carries the reports of the images it stands for
(``UNREADABLE_KEY``), which the training process takes off (``pop_unreadable``) and keeps in an
``UnreadableImages`` record: each file is named once in the log, the number of distinct files is
a training metric, and training stops, listing them, when there are more than
DATALOADER.MAX_BAD_IMAGES. Evaluation does not replace images: an AP over fewer images would
be silently wrong, so there an unreadable image stops the run with its name.
"""

import logging
import math
from typing import Dict, Iterable, List, Tuple

__all__ = [
    "UNREADABLE_KEY",
    "TooManyUnreadableImagesError",
    "UnreadableImages",
    "max_bad_images",
    "pop_unreadable",
]

logger = logging.getLogger(__name__)

# Key of a replacement sample's list of (file name, reason) of the unreadable images it replaces.
UNREADABLE_KEY = "replaces_unreadable_images"
# The share of the training images DATALOADER.MAX_BAD_IMAGES = -1 tolerates.
DEFAULT_TOLERATED_FRACTION = 0.01

Report = Tuple[str, str]  # (file name, why it cannot be read)


class TooManyUnreadableImagesError(RuntimeError):
    """More training images than DATALOADER.MAX_BAD_IMAGES cannot be read."""


def max_bad_images(value: int, num_images: int) -> int:
    """How many distinct unreadable images DATALOADER.MAX_BAD_IMAGES = ``value`` tolerates in a
    training set of ``num_images``: ``value`` itself, or for -1 1 % of the images, rounded up.

    Raises:
        ValueError naming the key when ``value`` is below -1.
    """
    if value < -1:
        raise ValueError(
            f"DATALOADER.MAX_BAD_IMAGES must be -1 (1 % of the training images) or a number of "
            f"images >= 0, got {value}"
        )
    return math.ceil(DEFAULT_TOLERATED_FRACTION * num_images) if value == -1 else value


def pop_unreadable(batch: Iterable[Dict]) -> List[Report]:
    """The reports that the samples of ``batch`` carry, removed from the samples."""
    return [report for sample in batch for report in sample.pop(UNREADABLE_KEY, ())]


class UnreadableImages:
    """The distinct unreadable training images seen so far, in the order they were found."""

    def __init__(self, limit: int):
        """``limit``: how many are tolerated (``max_bad_images``)."""
        self.limit = limit
        self.files: List[str] = []

    def add(self, reports: Iterable[Report]) -> None:
        """Record ``reports``; log a warning for each file not seen before."""
        for file_name, reason in reports:
            if file_name in self.files:
                continue
            self.files.append(file_name)
            logger.warning(
                f"training: {reason}; replaced by another image wherever it occurs, not reported "
                f"again ({len(self.files)} unreadable so far, DATALOADER.MAX_BAD_IMAGES "
                f"tolerates {self.limit})"
            )

    def check(self) -> None:
        """Raise TooManyUnreadableImagesError, listing the files, above the limit."""
        if len(self.files) > self.limit:
            raise TooManyUnreadableImagesError(
                f"{len(self.files)} training images cannot be read, more than "
                f"DATALOADER.MAX_BAD_IMAGES ({self.limit}): {', '.join(self.files)}"
            )

    def summary(self) -> str:
        """One line for the end of training."""
        if not self.files:
            return "Unreadable training images: none"
        return (f"Unreadable training images: {len(self.files)} (replaced by other images): "
                f"{', '.join(self.files)}")
