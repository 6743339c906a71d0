#!/usr/bin/env python
"""Tracking accuracy and cost of grouppose.tracking.PoseTracker on generated keypoint tracks.

    python tools/benchmarks/bench_tracking.py [--sequences 5] [--frames 300] \
        [--json FILE] [--plot FILE.png]

Generates sequences of people with ground-truth identities (keypoint tracks directly, no images):
people walking; pairs crossing each other at the same height (their boxes overlap, the one behind
often missed); people leaving and entering the image. Every set has missed detections, keypoint
jitter and false poses. PoseTracker runs on the corrupted detections and motmetrics (a standard
MOT evaluation library) scores its ids against the truth, a pose matching a true one at OKS >= 0.5:
IDF1, MOTA and identity switches per 100 frames. Then the time of ``update`` per frame for 5 to
40 people on one thread (best of 3 runs), and the One-Euro smoothing's jitter reduction and lag
on jittered walking tracks (root mean square frame-to-frame change of the error, before and
after; lag in frames behind the true motion).
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from grouppose.modeling.oks import COCO_OKS_SIGMAS, pairwise_keypoint_similarity
from grouppose.tracking import KeypointSmoother, PoseTracker

WIDTH, HEIGHT = 1280, 720
FPS = 30.0
MATCH_OKS = 0.5  # a tracked pose covers a true one at OKS >= this (COCO's loosest AP threshold)
# A standing person of height 1, COCO keypoint order, centred on the hips.
_TEMPLATE = np.array([
    (0.0, -0.45), (-0.02, -0.47), (0.02, -0.47), (-0.04, -0.46), (0.04, -0.46),
    (-0.12, -0.33), (0.12, -0.33), (-0.15, -0.15), (0.15, -0.15), (-0.16, 0.0), (0.16, 0.0),
    (-0.08, 0.03), (0.08, 0.03), (-0.08, 0.25), (0.08, 0.25), (-0.08, 0.47), (0.08, 0.47),
])
_LEFT_SWING, _RIGHT_SWING = [9, 16], [10, 15]  # wrist and opposite ankle swing together
_WIDTH_RATIO = 0.4  # box width / height of a person, for the true pose's OKS area
# (min_cutoff Hz, beta per pixel) of KeypointSmoother compared with its defaults.
SMOOTHING_SETTINGS = ((0.5, 0.05), (2.0, 0.05), (1.0, 0.0), (1.0, 0.2))


@dataclass
class Corruption:
    """How detections differ from the truth."""

    miss: float = 0.1  # probability that a visible person is not detected in a frame
    miss_behind: float = 0.5  # ... while overlapping a nearer person
    jitter: float = 0.01  # keypoint noise, standard deviation / person height
    false_poses: float = 0.3  # false poses per frame (Poisson mean)


@dataclass
class Sequence:
    """Ground truth and detections of one generated sequence."""

    truth: List[Dict[int, np.ndarray]] = field(default_factory=list)  # per frame: id -> (K, 2)
    heights: Dict[int, float] = field(default_factory=dict)
    detections: List[np.ndarray] = field(default_factory=list)  # per frame: (n, K, 3)
    detection_ids: List[np.ndarray] = field(default_factory=list)  # per frame: (n,), -1 false


def _pose(centre: np.ndarray, height: float, phase: float) -> np.ndarray:
    """(K, 2) keypoints of a walking person (limbs swinging with ``phase``)."""
    pose = _TEMPLATE * height
    swing = 0.06 * height * np.sin(phase)
    pose[_LEFT_SWING, 0] += swing
    pose[_RIGHT_SWING, 0] -= swing
    return pose + centre


def _people(rng: np.random.Generator, scenario: str, num_people: int, num_frames: int):
    """Per person: start frame, end frame, start centre, velocity (pixels / frame), height."""
    people = []
    for person in range(num_people):
        height = rng.uniform(120, 260)
        speed = rng.uniform(1.0, 4.0)
        if scenario == "crossing":  # pairs at the same height walking towards each other
            pair, side = divmod(person, 2)
            y = HEIGHT * (0.3 + 0.4 * ((pair * 0.37) % 1.0))
            start_x = rng.uniform(0.1, 0.3) * WIDTH if side == 0 else rng.uniform(0.7, 0.9) * WIDTH
            velocity = np.array([speed if side == 0 else -speed, rng.normal(0, 0.2)])
            people.append((0, num_frames, np.array([start_x, y]), velocity, height))
        elif scenario == "enter_leave":  # walk across the image, entering and leaving it
            start = int(rng.uniform(0, num_frames * 0.6))
            side = rng.choice([-1, 1])
            start_x = -0.2 * height if side > 0 else WIDTH + 0.2 * height
            velocity = np.array([side * speed * 2, rng.normal(0, 0.3)])
            centre = np.array([start_x, rng.uniform(0.25, 0.75) * HEIGHT])
            people.append((start, num_frames, centre, velocity, height))
        else:  # walking: anywhere, any direction, turning back at the borders
            centre = rng.uniform([0.1 * WIDTH, 0.3 * HEIGHT], [0.9 * WIDTH, 0.7 * HEIGHT])
            angle = rng.uniform(0, 2 * np.pi)
            people.append((0, num_frames, centre, speed * np.array([np.cos(angle),
                                                                      np.sin(angle)]), height))
    return people


def _inside(pose: np.ndarray) -> bool:
    """Whether most of the pose is in the image (else it is not in the ground truth)."""
    inside = (pose[:, 0] >= 0) & (pose[:, 0] < WIDTH) & (pose[:, 1] >= 0) & (pose[:, 1] < HEIGHT)
    return inside.mean() >= 0.5


def generate_sequence(rng: np.random.Generator, scenario: str, num_people: int,
                      num_frames: int, corruption: Corruption) -> Sequence:
    """A sequence of ``scenario`` ("walking", "crossing" or "enter_leave")."""
    sequence = Sequence()
    people = _people(rng, scenario, num_people, num_frames)
    centres = [p[2].astype(float) for p in people]
    velocities = [p[3].astype(float) for p in people]
    for frame in range(num_frames):
        truth: Dict[int, np.ndarray] = {}
        for person, (start, end, _, _, height) in enumerate(people):
            if start <= frame < end:
                if scenario == "walking":  # turn back at the borders
                    for axis, limit in ((0, WIDTH), (1, HEIGHT)):
                        margin = 0.5 * height
                        if not margin <= centres[person][axis] <= limit - margin:
                            velocities[person][axis] = np.sign(limit / 2 - centres[person][axis]) \
                                * abs(velocities[person][axis])
                pose = _pose(centres[person], height, 0.15 * frame + person)
                centres[person] = centres[person] + velocities[person]
                if _inside(pose):
                    truth[person + 1] = pose
                    sequence.heights[person + 1] = height
        sequence.truth.append(truth)
        poses, ids = _detect(rng, truth, sequence.heights, corruption)
        sequence.detections.append(poses)
        sequence.detection_ids.append(ids)
    return sequence


def _detect(rng: np.random.Generator, truth: Dict[int, np.ndarray], heights: Dict[int, float],
            corruption: Corruption):
    """One frame's corrupted detections: (n, K, 3) poses and their true ids (-1: false)."""
    poses, ids = [], []
    for person, pose in truth.items():
        # Behind: overlapping a taller (nearer) person.
        overlap = np.array([0.3, 0.5]) * heights[person]  # centres closer than this in x, y
        behind = any(
            other != person and heights[other] > heights[person]
            and (np.abs(pose.mean(0) - truth[other].mean(0)) < overlap).all()
            for other in truth
        )
        if rng.random() < (corruption.miss_behind if behind else corruption.miss):
            continue
        noise = rng.normal(0, corruption.jitter * heights[person], pose.shape)
        poses.append(pose + noise)
        ids.append(person)
    for _ in range(rng.poisson(corruption.false_poses)):
        height = rng.uniform(80, 260)
        centre = rng.uniform([0, 0], [WIDTH, HEIGHT])
        poses.append(_pose(centre, height, rng.uniform(0, 2 * np.pi)))
        ids.append(-1)
    keypoints = np.zeros((len(poses), len(_TEMPLATE), 3))
    if poses:
        keypoints[:, :, :2] = np.stack(poses)
        keypoints[:, :, 2] = 1.0
    return keypoints, np.array(ids, dtype=np.int64)


def _oks_distances(truth: np.ndarray, heights: np.ndarray, hypotheses: np.ndarray) -> np.ndarray:
    """(G, H) 1 - OKS, NaN (no match allowed) where OKS < MATCH_OKS."""
    if not len(truth) or not len(hypotheses):
        return np.empty((len(truth), len(hypotheses)))
    similarity = pairwise_keypoint_similarity(
        torch.from_numpy(hypotheses), torch.from_numpy(truth),
        torch.ones(truth.shape[:2], dtype=torch.bool),
        torch.from_numpy(_WIDTH_RATIO * heights ** 2), torch.tensor(COCO_OKS_SIGMAS).double(),
    ).numpy().T
    return np.where(similarity >= MATCH_OKS, 1.0 - similarity, np.nan)


def evaluate(sequences: List[Sequence], tracker: PoseTracker) -> Dict[str, float]:
    """IDF1, MOTA and id switches per 100 frames of the tracker over the sequences."""
    import motmetrics

    accumulators = []
    for sequence in sequences:
        tracker.reset()
        accumulator = motmetrics.MOTAccumulator(auto_id=True)
        for truth, detections in zip(sequence.truth, sequence.detections):
            ids = tracker.update(detections, np.ones(len(detections)))
            tracked = ids >= 0
            true_ids = list(truth)
            distances = _oks_distances(
                np.array([truth[i] for i in true_ids]).reshape(-1, len(_TEMPLATE), 2),
                np.array([sequence.heights[i] for i in true_ids]),
                detections[tracked, :, :2],
            )
            accumulator.update(true_ids, ids[tracked].tolist(), distances)
        accumulators.append(accumulator)
    summary = motmetrics.metrics.create().compute_many(
        accumulators, metrics=["idf1", "mota", "num_switches", "num_frames"], generate_overall=True
    ).loc["OVERALL"]
    return {"idf1": float(summary["idf1"]), "mota": float(summary["mota"]),
            "id_switches_per_100_frames": 100 * float(summary["num_switches"])
            / float(summary["num_frames"])}


def time_per_frame(num_people: int, num_frames: int, seed: int,
                   repeats: int = 3) -> Dict[str, float]:
    """Milliseconds of one ``update`` for ``num_people`` walking people (one thread): the mean
    over the sequence, best of ``repeats`` runs (the least disturbed by other processes), in
    wall-clock time and in this process's CPU time (which other processes sharing the cores do
    not inflate as much)."""
    sequence = generate_sequence(np.random.default_rng(seed), "walking", num_people, num_frames,
                                 Corruption(miss=0.05, false_poses=0.0))
    scores = [np.ones(len(detections)) for detections in sequence.detections]
    best = {"wall": float("inf"), "cpu": float("inf")}
    for _ in range(repeats):
        tracker = PoseTracker()
        tracker.update(sequence.detections[0], scores[0])  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        for detections, frame_scores in zip(sequence.detections[1:], scores[1:]):
            tracker.update(detections, frame_scores)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best = {"wall": min(best["wall"], wall * 1000 / (num_frames - 1)),
                "cpu": min(best["cpu"], cpu * 1000 / (num_frames - 1))}
    return best


def smoothing_effect(num_frames: int, seed: int, smoother: KeypointSmoother) -> Dict[str, float]:
    """Jitter (RMS frame-to-frame change of the error, pixels) of jittered true tracks before
    and after smoothing, and the lag smoothing adds (frames: mean error along the motion /
    speed)."""
    sequence = generate_sequence(np.random.default_rng(seed), "walking", 8, num_frames,
                                 Corruption(miss=0.0, false_poses=0.0, jitter=0.01))
    raw, smoothed, truth, velocity = [], [], [], []
    for frame, (poses, ids) in enumerate(zip(sequence.detections, sequence.detection_ids)):
        filtered = smoother(poses, ids, frame / FPS)
        for pose, smooth_pose, person in zip(poses, filtered, ids.tolist()):
            if frame + 1 < num_frames and person in sequence.truth[frame + 1]:
                true_pose = sequence.truth[frame][person]
                raw.append(pose[:, :2] - true_pose)
                smoothed.append(smooth_pose[:, :2] - true_pose)
                truth.append(person)
                velocity.append(sequence.truth[frame + 1][person] - true_pose)
    raw, smoothed, velocity = np.array(raw), np.array(smoothed), np.array(velocity)
    person = np.array(truth)

    def jitter(errors: np.ndarray) -> float:  # consecutive samples of each person
        changes = [np.diff(errors[person == p], axis=0).reshape(-1) for p in np.unique(person)]
        return float(np.sqrt(np.mean(np.concatenate(changes) ** 2)))

    # An output lagging t frames behind is off by -t * velocity: t = -(error . v) / |v|^2.
    speed_squared = (velocity ** 2).sum(-1)
    moving = speed_squared > 0.25

    def lag(errors: np.ndarray) -> float:
        return float(np.mean(-(errors * velocity).sum(-1)[moving] / speed_squared[moving]))

    return {"jitter_before_px": jitter(raw), "jitter_after_px": jitter(smoothed),
            "lag_before_frames": lag(raw), "lag_frames": lag(smoothed)}


def plot(results: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (accuracy, cost) = plt.subplots(1, 2, figsize=(10, 3.8))
    sets = list(results["accuracy"])
    positions = np.arange(len(sets))
    for offset, (key, label) in enumerate((("idf1", "IDF1"), ("mota", "MOTA"))):
        accuracy.bar(positions + (offset - 0.5) * 0.35, [results["accuracy"][s][key] for s in sets],
                     0.35, label=label)
    switches = accuracy.twinx()
    switches.plot(positions, [results["accuracy"][s]["id_switches_per_100_frames"] for s in sets],
                  "kD", label="ID switches / 100 frames")
    switches.set_ylabel("ID switches / 100 frames")
    switches.set_ylim(0, max(2.0, *[results["accuracy"][s]["id_switches_per_100_frames"]
                                    for s in sets]) * 1.3)
    accuracy.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    accuracy.set_xticks(positions, sets)
    accuracy.set_ylim(0, 1.3)
    accuracy.set_title("PoseTracker on generated tracks (motmetrics)")
    handles = accuracy.get_legend_handles_labels()[0] + switches.get_legend_handles_labels()[0]
    accuracy.legend(handles=handles, loc="upper center", ncol=3, fontsize=8)
    people = [int(n) for n in results["ms_per_frame"]]
    for clock in ("wall", "cpu"):
        cost.plot(people, [ms[clock] for ms in results["ms_per_frame"].values()], "o-",
                  label=f"{clock} time")
    cost.legend()
    cost.axhline(2.0, color="grey", linestyle=":", linewidth=1)
    cost.set_xlabel("people per frame")
    cost.set_ylabel("ms per frame (1 thread)")
    cost.set_title("PoseTracker.update time")
    cost.set_ylim(0, None)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=5, help="sequences per set")
    parser.add_argument("--frames", type=int, default=300, help="frames per sequence")
    parser.add_argument("--people", type=int, default=6, help="people per sequence")
    parser.add_argument("--timing-people", type=int, nargs="*", default=[5, 10, 20, 40])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write a PNG plot of the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    results: Dict = {"accuracy": {}, "ms_per_frame": {}}
    for set_index, scenario in enumerate(("walking", "crossing", "enter_leave")):
        sequences = [
            generate_sequence(np.random.default_rng([args.seed, set_index, s]), scenario,
                              args.people, args.frames, Corruption())
            for s in range(args.sequences)
        ]
        results["accuracy"][scenario] = evaluate(sequences, PoseTracker())
    for num_people in args.timing_people:
        results["ms_per_frame"][str(num_people)] = time_per_frame(num_people, args.frames,
                                                                  args.seed)
    results["smoothing"] = smoothing_effect(args.frames, args.seed, KeypointSmoother())
    results["smoothing_settings"] = [
        {"min_cutoff": min_cutoff, "beta": beta, **smoothing_effect(
            args.frames, args.seed, KeypointSmoother(min_cutoff=min_cutoff, beta=beta))}
        for min_cutoff, beta in SMOOTHING_SETTINGS
    ]

    print(f"{'set':12} {'IDF1':>6} {'MOTA':>6} {'IDsw/100f':>10}")
    for scenario, metrics in results["accuracy"].items():
        print(f"{scenario:12} {metrics['idf1']:6.3f} {metrics['mota']:6.3f} "
              f"{metrics['id_switches_per_100_frames']:10.2f}")
    for num_people, ms in results["ms_per_frame"].items():
        print(f"{num_people:>3} people: {ms['wall']:.2f} ms per frame ({ms['cpu']:.2f} ms CPU)")
    for smoothing in [results["smoothing"], *results["smoothing_settings"]]:
        setting = (f"min_cutoff {smoothing['min_cutoff']}, beta {smoothing['beta']}"
                   if "beta" in smoothing else "defaults")
        print(f"One-Euro smoothing ({setting}): jitter {smoothing['jitter_before_px']:.2f} -> "
              f"{smoothing['jitter_after_px']:.2f} px, lag {smoothing['lag_before_frames']:.2f} "
              f"-> {smoothing['lag_frames']:.2f} frames")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
