"""Temporal smoothing of tracked keypoints with the One-Euro filter.

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a first-order low-pass filter whose
cutoff frequency rises with the signal's speed: still joints are smoothed hard (little jitter),
moving joints lightly (little lag). ``tools/benchmarks/bench_tracking.py`` measures both.
"""

import math
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["KeypointSmoother", "OneEuroFilter"]


def _smoothing_factor(cutoff: np.ndarray, interval: float) -> np.ndarray:
    """Weight of the new sample in an exponential filter of ``cutoff`` Hz sampled every
    ``interval`` seconds."""
    time_constant = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + time_constant / interval)


class OneEuroFilter:
    """One-Euro filter of an array signal, element-wise.

    Args:
        min_cutoff: cutoff (Hz) at rest; lower = smoother still joints.
        beta: cutoff increase per unit of speed (per signal unit per second, e.g. 1 / pixel);
            higher = less lag on fast motion.
        derivative_cutoff: cutoff (Hz) of the filtered speed.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05,
                 derivative_cutoff: float = 1.0):
        if min_cutoff <= 0 or derivative_cutoff <= 0 or beta < 0:
            raise ValueError("min_cutoff and derivative_cutoff must be > 0 and beta >= 0")
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.derivative_cutoff = derivative_cutoff
        self._previous: Optional[Tuple[float, np.ndarray, np.ndarray]] = None

    def __call__(self, value: np.ndarray, time: float) -> np.ndarray:
        """Filtered ``value`` (any shape, the same at each call) at ``time`` seconds."""
        value = np.asarray(value, dtype=np.float64)
        if self._previous is None:
            self._previous = (time, value, np.zeros_like(value))
            return value
        previous_time, previous_value, previous_speed = self._previous
        interval = time - previous_time
        if interval <= 0:
            raise ValueError(f"times must increase, got {time} after {previous_time}")
        alpha = _smoothing_factor(np.asarray(self.derivative_cutoff), interval)
        speed = alpha * (value - previous_value) / interval + (1 - alpha) * previous_speed
        alpha = _smoothing_factor(self.min_cutoff + self.beta * np.abs(speed), interval)
        filtered = alpha * value + (1 - alpha) * previous_value
        self._previous = (time, filtered, speed)
        return filtered


class KeypointSmoother:
    """One One-Euro filter per track id over its keypoints' x, y.

    Args:
        forget_after: seconds after which the filter of an id no longer seen is dropped (a
            returning id then starts afresh instead of being pulled towards an old position).
        min_cutoff, beta, derivative_cutoff: see ``OneEuroFilter`` (beta per pixel).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05,
                 derivative_cutoff: float = 1.0, forget_after: float = 1.0):
        self._parameters = (min_cutoff, beta, derivative_cutoff)
        OneEuroFilter(*self._parameters)  # checks them now rather than at the first pose
        self.forget_after = forget_after
        self._filters: Dict[int, OneEuroFilter] = {}
        self._last_seen: Dict[int, float] = {}

    def __call__(self, keypoints: np.ndarray, track_ids: np.ndarray, time: float) -> np.ndarray:
        """Smoothed copy of one frame's keypoints.

        Args:
            keypoints: (n, K, 3) x, y, score; track_ids: (n,), -1 = untracked (left as is).
            time: the frame's time in seconds.

        Returns:
            (n, K, 3): x, y filtered per id, scores unchanged.
        """
        for stale in [i for i, seen in self._last_seen.items() if time - seen > self.forget_after]:
            del self._filters[stale], self._last_seen[stale]
        smoothed = np.array(keypoints, dtype=np.float64, copy=True)
        for index, track_id in enumerate(np.asarray(track_ids).tolist()):
            if track_id < 0:
                continue
            one_euro = self._filters.setdefault(track_id, OneEuroFilter(*self._parameters))
            smoothed[index, :, :2] = one_euro(smoothed[index, :, :2], time)
            self._last_seen[track_id] = time
        return smoothed
