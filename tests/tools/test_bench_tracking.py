"""tools/benchmarks/bench_tracking.py: its generated sequences and its motmetrics scoring, on
trackers whose answers are known, and the whole script on a small run."""

import json

import numpy as np
import pytest

pytest.importorskip("norfair", reason="the tracker needs the 'track' extra")
pytest.importorskip("motmetrics", reason="the benchmark needs the 'track' extra")

from tools.benchmarks import bench_tracking as bench  # noqa: E402

CLEAN = bench.Corruption(miss=0.0, miss_behind=0.0, false_poses=0.0)


class OracleTracker:
    """Answers the true identities of a sequence's detections, optionally swapping ids 1 and 2
    from frame ``swap_at`` on."""

    def __init__(self, sequence, swap_at=None):
        self.sequence, self.swap_at = sequence, swap_at

    def reset(self):
        self.frame = 0

    def update(self, keypoints, scores):
        ids = self.sequence.detection_ids[self.frame].copy()
        if self.swap_at is not None and self.frame >= self.swap_at:
            ids = np.select([ids == 1, ids == 2], [2, 1], ids)
        self.frame += 1
        return ids


def crossing_sequence(corruption=CLEAN, frames=60):
    return bench.generate_sequence(np.random.default_rng(0), "crossing", 2, frames, corruption)


def test_crossing_people_overlap_at_some_frame():
    sequence = crossing_sequence(frames=300)
    gaps = [abs(people[1].mean(0)[0] - people[2].mean(0)[0])
            for people in sequence.truth if 1 in people and 2 in people]
    assert min(gaps) < 10  # pixels between the two hips: they pass through each other


def test_perfect_identities_score_one_and_no_switch():
    sequence = crossing_sequence()
    metrics = bench.evaluate([sequence], OracleTracker(sequence))
    assert metrics["idf1"] == pytest.approx(1.0)
    assert metrics["mota"] == pytest.approx(1.0)
    assert metrics["id_switches_per_100_frames"] == 0


def test_swapped_identities_count_two_switches():
    sequence = crossing_sequence()
    metrics = bench.evaluate([sequence], OracleTracker(sequence, swap_at=30))
    # Both people change id once in 60 frames: 2 switches, 3.33 per 100 frames.
    assert metrics["id_switches_per_100_frames"] == pytest.approx(200 / 60)
    assert 0.4 < metrics["idf1"] < 0.6  # each id is right on about half of its frames


def test_false_poses_are_scored_as_false_positives():
    sequence = crossing_sequence(bench.Corruption(miss=0.0, miss_behind=0.0, false_poses=1.0))

    class KeepsFalsePoses(OracleTracker):
        def update(self, keypoints, scores):
            ids = super().update(keypoints, scores)
            return np.where(ids < 0, 100 + np.arange(len(ids)), ids)

    assert bench.evaluate([sequence], KeepsFalsePoses(sequence))["mota"] < 0.8
    assert bench.evaluate([sequence], OracleTracker(sequence))["mota"] == pytest.approx(1.0)


def test_script_reports_accuracy_timing_and_smoothing(tmp_path, capsys):
    output, figure = tmp_path / "tracking.json", tmp_path / "tracking.png"
    assert bench.main(["--sequences", "1", "--frames", "40", "--people", "4",
                       "--timing-people", "5", "--json", str(output), "--plot", str(figure)]) == 0
    results = json.loads(output.read_text())
    assert set(results["accuracy"]) == {"walking", "crossing", "enter_leave"}
    for metrics in results["accuracy"].values():
        assert 0 < metrics["idf1"] <= 1 and metrics["mota"] <= 1
        assert metrics["id_switches_per_100_frames"] >= 0
    assert list(results["ms_per_frame"]) == ["5"]
    assert results["ms_per_frame"]["5"]["wall"] > 0 and results["ms_per_frame"]["5"]["cpu"] > 0
    smoothing = results["smoothing"]
    assert smoothing["jitter_after_px"] < smoothing["jitter_before_px"]
    assert figure.stat().st_size > 0
    assert "IDF1" in capsys.readouterr().out
