"""The training hook that reports and limits unreadable images (``grouppose.data.
unreadable_images``): every process takes the reports of the batches it trained on, the
processes share them when any has one, and all stop together above DATALOADER.MAX_BAD_IMAGES."""

import logging
from typing import Dict, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

from grouppose.data.unreadable_images import UnreadableImages
from grouppose.engine.agreement import StepAgreement
from grouppose.engine.data_stream import TrainingBatches

__all__ = ["UnreadableImageHook"]

logger = logging.getLogger(__name__)

METRIC = "data/unreadable_images"  # distinct unreadable training images so far


class UnreadableImageHook(HookBase):
    """After each step: log new unreadable images once, write their number as
    the METRIC scalar, raise ``TooManyUnreadableImagesError`` above ``limit``; at the end, a
    summary line. Its record is part of the checkpoint, so that --resume keeps counting.
    ``agreement``: shared with the other hooks that all processes decide on together."""

    QUESTION = "unreadable images"

    def __init__(self, data_loader: TrainingBatches, limit: int,
                 agreement: Optional[StepAgreement] = None):
        self.data_loader = data_loader
        self.record = UnreadableImages(limit)
        self.agreement = agreement or StepAgreement()
        self.agreement.add(self.QUESTION, lambda: bool(self.data_loader.unreadable))

    def after_step(self) -> None:
        # Before taking the reports: the agreement may ask its questions now.
        any_reports = self.agreement.any_process(self.QUESTION, self.trainer.iter)
        reports, self.data_loader.unreadable = self.data_loader.unreadable, []
        if any_reports:
            # Every process keeps the same record (the log lines of the others go to their own
            # log.txt.rank<n>, not to log.txt).
            for process_reports in comm.all_gather(reports):
                self.record.add(process_reports)
            self.record.check()
        self.trainer.storage.put_scalar(METRIC, len(self.record.files), smoothing_hint=False)

    def after_train(self) -> None:
        logger.info(self.record.summary())

    def state_dict(self) -> Dict:
        return {"files": list(self.record.files)}

    def load_state_dict(self, state_dict: Dict) -> None:
        self.record.files = list(state_dict["files"])
