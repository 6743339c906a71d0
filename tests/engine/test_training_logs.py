"""The grouppose package's log records (e.g. the dataset load summaries) reach OUTPUT_DIR/log.txt
and the console when training and with --eval-only, as Detectron2's do."""

from helpers.training_utils import TRAIN_SET, VAL_SET, tiny_training_config

from grouppose.engine import Trainer


def _summary(dataset_name: str) -> str:
    """The start of load_keypoint_json's info line (LoadSummary.log)."""
    return f"grouppose.data.keypoint_json INFO: dataset '{dataset_name}' ("


def test_dataset_summaries_land_in_log_txt(tmp_path, capsys, restore_grouppose_logger):
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "train", ["SOLVER.MAX_ITER", "1"])
    Trainer(cfg)  # builds the train loader: loads the training set
    assert _summary(TRAIN_SET) in (tmp_path / "train" / "log.txt").read_text()
    assert f"dataset '{TRAIN_SET}' (" in capsys.readouterr().out

    # --eval-only: train_net.py builds the model, then evaluates (loading the test set).
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "eval")
    Trainer.build_model(cfg)
    Trainer.build_evaluator(cfg, VAL_SET)
    assert _summary(VAL_SET) in (tmp_path / "eval" / "log.txt").read_text()
