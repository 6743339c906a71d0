"""Drawing the generated dataset's scenes: articulated human figures over textured backgrounds.

A figure is a 2-D skeleton (torso lean, head tilt, arm and leg angles sampled per figure) drawn
with OpenCV: pants-coloured legs with dark shoes at the ankles, a filled torso whose corners are
the shoulders and hips, shirt-coloured upper arms, skin-coloured forearms ending in hands at the
wrists, joint caps at elbows and knees, a neck and a round head.

Left and right. A figure faces the camera (face drawn on a skin-coloured head, light chest mark;
its left side appears on the image's right) or faces away (hair-coloured head, backpack; its left
side appears on the image's left; nose and eyes unlabeled). Left/right is therefore carried by
*chiral* cues (which way the figure faces, and where a limb is relative to it), never by colour:
a horizontal flip with the flip-map label swap turns a generated figure into another figure the
generator could have drawn, so flip augmentation is consistent with the data. (Colour-coding the
sides would be contradicted by every flipped training image.)

Visibility is exact: every figure (and occluder) also paints its index into an "owner" map, drawn
back to front; a keypoint covered by a later figure or an occluder is v = 1, a keypoint outside
the image (or a face point of a figure facing away) is unlabeled, v = 0, others are v = 2; a
figure with fewer than 3 visible points gets no keypoints at all (num_keypoints 0, as COCO
annotates people too hidden to pose). Each person's area and box are those of its visible
silhouette, as COCO's come from visible masks.
"""

import colorsys
import dataclasses
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

__all__ = ["POINT_NAMES", "RenderedPerson", "RenderedScene", "render_scene"]

# Every point a figure defines: COCO's 17, then CrowdPose's "head" (top of head) and "neck".
POINT_NAMES = tuple(COCO_PERSON_KEYPOINT_NAMES) + ("head", "neck")
_POINT_INDEX = {name: i for i, name in enumerate(POINT_NAMES)}
_FACE_POINTS = ("nose", "left_eye", "right_eye")

# Figure proportions, in units of the figure's scale (~ 1.05 x its head-to-ankle height).
# Limbs, hips and torso are wide enough that a silhouette fills about a third of its box (a
# stick figure fills a quarter): OKS measures errors relative to the square root of the
# annotated area, with sigmas calibrated on COCO's people, so a thin figure would be judged
# far more strictly than a COCO person of the same height.
_TORSO = 0.30
_NECK = 0.045
_HEAD_RADIUS = 0.065
_SHOULDER_HALF_WIDTH = 0.10
_HIP_HALF_WIDTH = 0.085
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.16, 0.15, 0.24, 0.23
_EXTENT_ABOVE_PELVIS = _TORSO + _NECK + 2 * _HEAD_RADIUS  # pelvis to head top
_EXTENT_BELOW_PELVIS = _THIGH + _SHIN  # pelvis to ankles, legs straight

_MIN_PERSON_HEIGHT = 64  # pixels, head top to ankles
_MIN_VISIBLE_POINTS = 3  # fewer visible points: no keypoints annotated
_OCCLUDER = 255  # owner-map value of occluders; figures use 1..254, background 0
_SKIN_TONES_HSV = ((0.07, 0.35, 0.95), (0.07, 0.45, 0.8), (0.06, 0.55, 0.6), (0.05, 0.6, 0.42))
_PEOPLE_WEIGHTS = np.array([1.0, 1.0, 0.9, 0.7, 0.5, 0.4])  # P(1..6 people) in a non-empty image


@dataclasses.dataclass
class RenderedPerson:
    """One annotated figure.

    points: (P, 2) int64 pixel coordinates (x, y) in ``POINT_NAMES`` order ((0, 0) if v = 0).
    visibility: (P,) int64, 0 unlabeled, 1 labeled but occluded, 2 visible; all 0 when fewer
        than 3 points are visible (a mostly hidden person).
    bbox: (x, y, w, h) of the visible silhouette; area: its pixel count (> 0).
    """

    points: np.ndarray
    visibility: np.ndarray
    bbox: Tuple[int, int, int, int]
    area: int


@dataclasses.dataclass
class RenderedScene:
    """image: (H, W, 3) uint8 BGR; people; crowd_boxes: (x, y, w, h) of crowd regions."""

    image: np.ndarray
    people: List[RenderedPerson]
    crowd_boxes: List[Tuple[int, int, int, int]]


class _Canvas:
    """Draws on the image (anti-aliased) and, when given, on the owner map (exact)."""

    def __init__(self, image: np.ndarray, owner: Optional[np.ndarray]):
        self.image, self.owner, self.value = image, owner, 0

    def line(self, p: np.ndarray, q: np.ndarray, color, thickness: int) -> None:
        p, q = tuple(int(v) for v in p), tuple(int(v) for v in q)
        cv2.line(self.image, p, q, color, thickness, cv2.LINE_AA)
        if self.owner is not None:
            cv2.line(self.owner, p, q, self.value, thickness, cv2.LINE_8)

    def circle(self, center: np.ndarray, radius: int, color) -> None:
        center = tuple(int(v) for v in center)
        cv2.circle(self.image, center, max(int(radius), 1), color, -1, cv2.LINE_AA)
        if self.owner is not None:
            cv2.circle(self.owner, center, max(int(radius), 1), self.value, -1, cv2.LINE_8)

    def polygon(self, points: np.ndarray, color) -> None:
        points = np.asarray(points, dtype=np.int32)
        cv2.fillConvexPoly(self.image, points, color, cv2.LINE_AA)
        if self.owner is not None:
            cv2.fillConvexPoly(self.owner, points, self.value, cv2.LINE_8)


def _bgr(hue: float, saturation: float, value: float) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return int(b * 255), int(g * 255), int(r * 255)


def _rotate(vector: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


def _sample_side(
    rng: np.random.Generator, sign: float, up: np.ndarray, across: np.ndarray,
    neck_base: np.ndarray,
) -> Dict[str, np.ndarray]:
    """Shoulder, elbow, wrist, hip, knee, ankle of one side; ``sign`` = +1 if the side appears
    on the image's right. Limb angle 0 points down the body, positive angles swing outwards."""
    def direction(angle: float) -> np.ndarray:
        return -np.cos(angle) * up + sign * np.sin(angle) * across

    shoulder = neck_base + sign * _SHOULDER_HALF_WIDTH * across
    hip = sign * _HIP_HALF_WIDTH * across
    arm, leg = rng.uniform(-0.35, 2.6), rng.uniform(-0.12, 0.6)
    elbow = shoulder + _UPPER_ARM * direction(arm)
    knee = hip + _THIGH * direction(leg)
    return {
        "shoulder": shoulder, "elbow": elbow,
        "wrist": elbow + _FOREARM * direction(arm + rng.uniform(-1.6, 1.6)),
        "hip": hip, "knee": knee,
        "ankle": knee + _SHIN * direction(leg + rng.uniform(-0.5, 0.35)),
    }


def _sample_pose(rng: np.random.Generator, facing_camera: bool) -> Dict[str, np.ndarray]:
    """Named points of a figure in figure units, origin at the pelvis, y down."""
    lean = float(np.clip(rng.normal(0.0, 0.12), -0.35, 0.35))
    up = np.array([np.sin(lean), -np.cos(lean)])
    across = np.array([np.cos(lean), np.sin(lean)])  # towards the image's right
    head_tilt = float(np.clip(rng.normal(0.0, 0.15), -0.4, 0.4))
    head_up, head_across = _rotate(up, head_tilt), _rotate(across, head_tilt)
    neck_base = _TORSO * up
    head_center = neck_base + (_NECK + _HEAD_RADIUS) * head_up
    points = {
        "head": head_center + _HEAD_RADIUS * head_up,
        "neck": neck_base + 0.5 * _NECK * head_up,
        "nose": head_center - 0.25 * _HEAD_RADIUS * head_up,
        "_head_center": head_center,
        "_neck_base": neck_base,
        "_pelvis": np.zeros(2),
    }
    for side in ("left", "right"):
        # A figure facing the camera shows its left side on the image's right.
        sign = 1.0 if (side == "left") == facing_camera else -1.0
        points[f"{side}_eye"] = (
            head_center + sign * 0.38 * _HEAD_RADIUS * head_across + 0.15 * _HEAD_RADIUS * head_up
        )
        points[f"{side}_ear"] = head_center + sign * _HEAD_RADIUS * head_across
        for part, xy in _sample_side(rng, sign, up, across, neck_base).items():
            points[f"{side}_{part}"] = xy
    return points


@dataclasses.dataclass
class _Style:
    shirt: Tuple[int, int, int]
    pants: Tuple[int, int, int]
    skin: Tuple[int, int, int]
    hair: Tuple[int, int, int]
    shoes: Tuple[int, int, int]
    mark: Tuple[int, int, int]
    arm_width: int
    leg_width: int


def _sample_style(rng: np.random.Generator, scale: float) -> _Style:
    skin_h, skin_s, skin_v = _SKIN_TONES_HSV[rng.integers(len(_SKIN_TONES_HSV))]
    return _Style(
        shirt=_bgr(rng.uniform(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)),
        pants=_bgr(rng.uniform(), rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.8)),
        skin=_bgr(skin_h + rng.uniform(-0.02, 0.02), skin_s, skin_v),
        hair=_bgr(rng.uniform(0.0, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.3)),
        shoes=_bgr(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.25)),
        mark=_bgr(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.85, 1.0)),
        arm_width=max(2, round(rng.uniform(0.06, 0.085) * scale)),
        leg_width=max(3, round(rng.uniform(0.085, 0.115) * scale)),
    )


def _darker(color: Tuple[int, int, int]) -> Tuple[int, int, int]:
    return tuple(int(c * 0.6) for c in color)


def _draw_figure(
    canvas: _Canvas, p: Dict[str, np.ndarray], style: _Style, facing_camera: bool, scale: float
) -> None:
    """Draw a figure, farthest parts first, from its pixel points ``p``."""
    for side in ("left", "right"):
        canvas.line(p[f"{side}_hip"], p[f"{side}_knee"], style.pants, style.leg_width)
        canvas.line(p[f"{side}_knee"], p[f"{side}_ankle"], style.pants, style.leg_width)
        canvas.circle(p[f"{side}_knee"], style.leg_width // 2 + 1, _darker(style.pants))
        canvas.circle(p[f"{side}_ankle"], 0.7 * style.leg_width, style.shoes)
    canvas.polygon(
        [p["left_shoulder"], p["left_hip"], p["right_hip"], p["right_shoulder"]], style.shirt
    )
    torso_center = 0.55 * p["_neck_base"] + 0.45 * p["_pelvis"]
    if facing_camera:
        canvas.circle(0.75 * p["_neck_base"] + 0.25 * p["_pelvis"], 0.03 * scale, style.mark)
    else:
        up = p["_neck_base"] - p["_pelvis"]
        up = up / max(np.linalg.norm(up), 1e-6)
        across = np.array([-up[1], up[0]])
        half_w, half_h = 0.06 * scale * across, 0.08 * scale * up
        corners = [torso_center + sx * half_w + sy * half_h for sx, sy in
                   ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        canvas.polygon(corners, _darker(style.shoes))
    for side in ("left", "right"):
        canvas.line(p[f"{side}_shoulder"], p[f"{side}_elbow"], style.shirt, style.arm_width)
        canvas.line(p[f"{side}_elbow"], p[f"{side}_wrist"], style.skin, style.arm_width)
        canvas.circle(p[f"{side}_elbow"], style.arm_width // 2 + 1, _darker(style.shirt))
        canvas.circle(p[f"{side}_wrist"], 0.75 * style.arm_width, style.skin)
    head_radius = _HEAD_RADIUS * scale
    canvas.line(p["_neck_base"], p["_head_center"], style.skin, style.arm_width)
    ear_radius = max(1.0, 0.3 * head_radius)
    if facing_camera:
        for side in ("left", "right"):
            canvas.circle(p[f"{side}_ear"], ear_radius, style.skin)
        canvas.circle(p["_head_center"], head_radius, style.skin)
        for side in ("left", "right"):
            canvas.circle(p[f"{side}_eye"], max(1.0, 0.14 * head_radius), (20, 20, 20))
        canvas.circle(p["nose"], max(1.0, 0.16 * head_radius), (40, 40, 200))
    else:
        canvas.circle(p["_head_center"], head_radius, style.hair)
        for side in ("left", "right"):
            canvas.circle(p[f"{side}_ear"], ear_radius, style.skin)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted colour with smooth blotches and a gradient, a few flat shapes, fine noise."""
    base = np.array(_bgr(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.85)))
    # Blotches and gradient live on a coarse grid that is upsampled (cheap, and smooth).
    grid_h, grid_w = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    ramp = np.linspace(-1.0, 1.0, grid_w)[None, :] if rng.uniform() < 0.5 else (
        np.linspace(-1.0, 1.0, grid_h)[:, None])
    grid = (base + rng.normal(0.0, 22.0, (grid_h, grid_w, 3))
            + rng.uniform(-30, 30) * ramp[:, :, None])
    grid = np.clip(grid, 0, 255).astype(np.uint8)
    image = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 10))):
        color = tuple(int(c) for c in np.clip(base + rng.integers(-60, 61, 3), 0, 255))
        x, y = int(rng.integers(width)), int(rng.integers(height))
        size = int(rng.integers(8, max(9, min(width, height) // 3)))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + size, y + size // 2), color, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), size // 2, color, -1, cv2.LINE_AA)
        else:
            end = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.line(image, (x, y), end, color, int(rng.integers(1, 4)), cv2.LINE_AA)
    # Uniform noise in 0..15 from raw random bytes (much faster than rng.integers).
    noise = np.frombuffer(rng.bytes(image.size), dtype=np.uint8).reshape(image.shape) >> 4
    return cv2.add(image, noise)


def _place_pose(
    rng: np.random.Generator, facing_camera: bool, height_px: float, pelvis: np.ndarray
) -> Tuple[Dict[str, np.ndarray], float]:
    scale = height_px / (_EXTENT_ABOVE_PELVIS + _EXTENT_BELOW_PELVIS)
    local = _sample_pose(rng, facing_camera)
    # Integer pixel coordinates: the labels are exactly the drawn joint centres.
    return {name: np.rint(pelvis + scale * xy) for name, xy in local.items()}, scale


def _draw_crowd(
    rng: np.random.Generator, canvas: _Canvas, height: int, width: int
) -> Optional[Tuple[int, int, int, int]]:
    """Many small overlapping figures in one region, annotated as a single crowd box."""
    box_w = int(rng.uniform(0.25, 0.45) * width)
    box_h = int(rng.uniform(0.15, 0.3) * height)
    if box_h < 40:
        return None
    x0, y0 = int(rng.integers(0, width - box_w)), int(rng.integers(0, height - box_h))
    for _ in range(int(rng.integers(6, 13))):
        height_px = rng.uniform(0.55, 0.9) * box_h
        half = 0.5 * height_px
        pelvis = np.array([
            rng.uniform(x0 + 0.3 * half, x0 + box_w - 0.3 * half),
            rng.uniform(y0 + 1.05 * half, y0 + box_h - 0.95 * half),
        ])
        facing = bool(rng.uniform() < 0.7)
        points, scale = _place_pose(rng, facing, height_px, pelvis)
        _draw_figure(canvas, points, _sample_style(rng, scale), facing, scale)
    return x0, y0, box_w, box_h


def _draw_occluders(rng: np.random.Generator, canvas: _Canvas, height: int, width: int) -> None:
    canvas.value = _OCCLUDER
    for _ in range(int(rng.integers(1, 3))):
        color = _bgr(rng.uniform(), rng.uniform(0.05, 0.4), rng.uniform(0.2, 0.8))
        w, h = rng.uniform(0.12, 0.35) * width, rng.uniform(0.1, 0.3) * height
        x, y = rng.uniform(-0.1 * width, width - 0.5 * w), rng.uniform(0.2 * height, height)
        if rng.uniform() < 0.5:
            canvas.polygon([(x, y), (x + w, y), (x + w, y + h), (x, y + h)], color)
        else:
            canvas.circle(np.array([x + w / 2, y + h / 2]), min(w, h) / 2, color)


def _annotate(
    points: Dict[str, np.ndarray], owner: np.ndarray, value: int, facing_camera: bool
) -> Optional[RenderedPerson]:
    mask = owner == value
    area = int(mask.sum())
    if area == 0:
        return None  # entirely hidden: nothing in the image to annotate
    height, width = owner.shape
    xy = np.stack([points[name] for name in POINT_NAMES]).astype(np.int64)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    top = np.zeros(len(xy), dtype=np.int64)
    top[inside] = owner[xy[inside, 1], xy[inside, 0]]
    # Later figures have larger owner values, occluders the largest.
    visibility = np.where(top > value, 1, 2) * inside
    if not facing_camera:
        visibility[[_POINT_INDEX[name] for name in _FACE_POINTS]] = 0
    if (visibility == 2).sum() < _MIN_VISIBLE_POINTS:
        # Mostly hidden: annotated as a person without keypoints (as COCO does), which
        # evaluation ignores and training skips, rather than as a pose to guess.
        visibility[:] = 0
    xy[visibility == 0] = 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    bbox = (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    return RenderedPerson(points=xy, visibility=visibility, bbox=bbox, area=area)


def render_scene(rng: np.random.Generator, width: int, height: int) -> RenderedScene:
    """Draw one image with 0-6 figures (8% empty), sometimes a crowd region and occluders.

    Args:
        rng: the image's random generator (the scene is a function of its state).
        width, height: image size in pixels (>= 96 each).

    Returns:
        the image and its annotations (see RenderedScene / RenderedPerson).
    """
    image = _background(rng, height, width)
    owner = np.zeros((height, width), dtype=np.uint8)
    crowd_boxes = []
    if rng.uniform() < 0.15:
        box = _draw_crowd(rng, _Canvas(image, None), height, width)
        if box is not None:
            crowd_boxes.append(box)
    num_people = 0
    if rng.uniform() >= 0.08:
        num_people = 1 + int(rng.choice(len(_PEOPLE_WEIGHTS),
                                        p=_PEOPLE_WEIGHTS / _PEOPLE_WEIGHTS.sum()))
    # Fewer people leave room for larger ones.
    max_height = min(width, height) * (0.95 if num_people <= 2 else 0.8 if num_people <= 4
                                       else 0.65)
    min_height = min(_MIN_PERSON_HEIGHT, max_height)
    figures = []
    for _ in range(num_people):
        height_px = float(np.exp(rng.uniform(np.log(min_height), np.log(max_height))))
        above = height_px * _EXTENT_ABOVE_PELVIS / (_EXTENT_ABOVE_PELVIS + _EXTENT_BELOW_PELVIS)
        if rng.uniform() < 0.2:  # partly outside the image
            pelvis = np.array([rng.uniform(-0.05, 1.05) * width,
                               rng.uniform(0.3 * height_px, height - 0.2 * height_px)])
        else:
            low, high = above, max(above, height - (height_px - above))
            pelvis = np.array([rng.uniform(0.05, 0.95) * width, rng.uniform(low, high)])
        facing = bool(rng.uniform() < 0.75)
        points, scale = _place_pose(rng, facing, height_px, pelvis)
        figures.append((points, facing, _sample_style(rng, scale), scale))
    # Lower feet = nearer the camera = drawn later.
    figures.sort(key=lambda f: max(f[0]["left_ankle"][1], f[0]["right_ankle"][1]))
    canvas = _Canvas(image, owner)
    for index, (points, facing, style, scale) in enumerate(figures):
        canvas.value = index + 1
        _draw_figure(canvas, points, style, facing, scale)
    if figures and rng.uniform() < 0.3:
        _draw_occluders(rng, canvas, height, width)
    people = []
    for index, (points, facing, _, _) in enumerate(figures):
        person = _annotate(points, owner, index + 1, facing)
        if person is not None:
            people.append(person)
    return RenderedScene(image=image, people=people, crowd_boxes=crowd_boxes)
