"""A training image that cannot be read (missing, truncated, not an image, empty) is replaced
by another one deterministically, named once in log.txt, counted (metric and summary line) and
limited by DATALOADER.MAX_BAD_IMAGES; in evaluation it stops the run with its name."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog
from helpers.training_utils import TRAIN_SET, VAL_SET, tiny_training_config

from grouppose.data.unreadable_images import TooManyUnreadableImagesError, max_bad_images
from grouppose.engine import Trainer
from grouppose.image_io import UnreadableImageError

NO_EVAL = ["DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000"]
# 16 training images, 4 per batch: 4 iterations see every image once.
ONE_EPOCH = 4



def _damage(paths, kinds):
    """Make each file of ``paths`` unreadable, in the way of the matching entry of ``kinds``."""
    for path, kind in zip(paths, kinds):
        path = Path(path)
        if kind == "missing":
            path.unlink()
        elif kind == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "not an image":
            path.write_text("<html>404 Not Found</html>")
        elif kind == "empty":
            path.write_bytes(b"")


def _config(tmp_path, opts=(), damaged=()):
    """The tiny training config; the first len(damaged) training images damaged as listed."""
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out", [*NO_EVAL, *opts])
    files = [record["file_name"] for record in DatasetCatalog.get(TRAIN_SET)][: len(damaged)]
    _damage(files, damaged)
    return cfg, files


KINDS = ("missing", "truncated", "not an image", "empty")


def test_unreadable_images_are_replaced_deterministically(tmp_path):
    cfg, bad = _config(tmp_path, damaged=KINDS)

    def batches(num_workers: int, start_iter: int, count: int):
        cfg.DATALOADER.NUM_WORKERS = num_workers
        loader = Trainer.build_train_loader(cfg)
        loader.start_iter = start_iter
        return list(itertools.islice(loader, count)), loader.unreadable

    reference, reports = batches(0, 0, 2 * ONE_EPOCH)
    # every damaged file was met (at least once per epoch: also when the next image of the set
    # replaces a damaged one), and its report names it and the reason
    assert {f for f, _ in reports} == set(bad) and len(reports) >= 2 * len(bad)
    for file_name, reason in reports:
        assert f"'{file_name}'" in reason
    assert not {x["file_name"] for batch in reference for x in batch} & set(bad)
    assert all(len(batch) == 4 for batch in reference)
    # the same replacements (images and augmentations) with workers and after a resume
    for num_workers, start_iter in ((2, 0), (0, ONE_EPOCH + 1)):
        later, _ = batches(num_workers, start_iter, 2 * ONE_EPOCH - start_iter)
        for expected, batch in zip(reference[start_iter:], later):
            assert [x["file_name"] for x in batch] == [x["file_name"] for x in expected]
            for x, y in zip(batch, expected):
                assert torch.equal(x["image"], y["image"])


@pytest.mark.usefixtures("restore_grouppose_logger", "one_cpu_thread")
def test_training_names_counts_and_summarises_unreadable_images(tmp_path):
    cfg, bad = _config(tmp_path, ["SOLVER.MAX_ITER", str(2 * ONE_EPOCH)], damaged=["truncated"])
    Trainer(cfg).train()
    log = (tmp_path / "out" / "log.txt").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line and bad[0] in line]
    assert len(warnings) == 1, warnings  # two epochs, named once
    assert "replaced by another image" in warnings[0]
    assert f"Unreadable training images: 1 (replaced by other images): {bad[0]}" in log
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").open()]
    assert metrics[-1]["data/unreadable_images"] == 1


@pytest.mark.usefixtures("restore_grouppose_logger", "one_cpu_thread")
def test_more_than_max_bad_images_stops_training_listing_them(tmp_path):
    cfg, bad = _config(tmp_path, ["SOLVER.MAX_ITER", str(2 * ONE_EPOCH),
                                  "DATALOADER.MAX_BAD_IMAGES", "1"], damaged=["missing", "empty"])
    with pytest.raises(TooManyUnreadableImagesError) as error:
        Trainer(cfg).train()
    message = str(error.value)
    assert message.startswith("2 training images cannot be read, more than "
                              "DATALOADER.MAX_BAD_IMAGES (1): ")
    assert all(file_name in message for file_name in bad)


def test_max_bad_images_semantics():
    assert max_bad_images(-1, 16) == 1  # 1 %, rounded up
    assert max_bad_images(-1, 64115) == 642  # COCO train2017 images with people
    assert max_bad_images(0, 64115) == 0
    assert max_bad_images(5, 16) == 5
    with pytest.raises(ValueError, match="DATALOADER.MAX_BAD_IMAGES must be -1"):
        max_bad_images(-2, 16)


@pytest.mark.usefixtures("restore_grouppose_logger", "one_cpu_thread")
def test_evaluation_stops_at_an_unreadable_image_with_its_name(tmp_path):
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out")
    bad = DatasetCatalog.get(VAL_SET)[2]["file_name"]
    _damage([bad], ["truncated"])
    with pytest.raises(UnreadableImageError, match=f"cannot read image '{bad}'"):
        Trainer.test(cfg, Trainer.build_model(cfg).eval())
