"""Load a checkpoint through Detectron2's public API and keep what the checkpointer reports.

``Checkpointer.load`` does not return the incompatible keys: it logs them as warnings (keys
missing from the checkpoint, keys the model does not use, shapes that differ). Upstream
Detectron2 refuses its private ``_load_file`` outside ``load()``, so tests read those warnings.
"""

import logging
from typing import Any, Dict, List, Tuple

from detectron2.checkpoint import DetectionCheckpointer

MISSING = "not found in the checkpoint"
UNEXPECTED = "not used by the model"
WRONG_SHAPE = "incompatible shapes"


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_with_warnings(
    checkpointer: DetectionCheckpointer, path: str
) -> Tuple[Dict[str, Any], List[str]]:
    """``checkpointer.load(path)``'s result and the warnings the checkpointer logged meanwhile.

    The handler sits on the checkpointer's own logger: detectron2's ``setup_logger`` (run by
    other tests) can stop propagation to the root logger, which pytest's ``caplog`` watches.
    """
    logger = checkpointer.logger
    collector = _Collector()
    level = logger.level
    logger.addHandler(collector)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.WARNING))
    try:
        extra = checkpointer.load(path)
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)
    return extra, collector.messages
