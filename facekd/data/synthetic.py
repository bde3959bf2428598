"""Synthetic 112x112 faces: the zero-setup training and validation data.

Every identity has a fixed structure drawn from ``(seed, identity)`` — face shape, skin
tone and texture (mottling, moles), hair colour/style/hairline, ear, eye, brow, nose and
mouth geometry and colours, glasses, beard.  Every image adds nuisance drawn from
``(seed, identity, index)`` — pose (in-plane rotation, scale, shift, a little yaw/pitch),
expression (mouth open, smile, blink, raised brows, gaze), background, a lighting
gradient and colour cast, noise and sometimes blur.  Images are roughly aligned like the
arcface template (eyes near (38, 52) and (74, 52)) and rendered with OpenCV primitives
(~1 ms each on one core).

* :class:`SyntheticFaceGenerator` — ``render(identity, index) -> (image, landmarks)``.
* :class:`SyntheticFaces` — a :class:`~facekd.data.base.FaceDataset` (training).
* :func:`synthetic_pair_set` — a verification :class:`~facekd.data.pairs.PairSet` on held-out
  identities (``identity_offset``), by default 600 pairs in 10 identity-disjoint folds.
* :func:`write_synthetic_tree` — identity folders + an LFW-style ``pairs.txt`` on disk.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from facekd.data.align import ARCFACE_DST
from facekd.data.base import FaceDataset

#: Bumped whenever rendering changes, so dataset fingerprints (teacher caches) change too.
GENERATOR_VERSION = 1
#: Identity offset of the default held-out (validation) identities.
HELD_OUT_OFFSET = 1_000_000

SIZE = 112
_SHIFT = 4                      # cv2 fixed-point bits: coordinates in 1/16 px
_ONE = 1 << _SHIFT

_SKIN_LIGHT = np.array([236, 201, 176], np.float32)
_SKIN_DARK = np.array([92, 58, 40], np.float32)
_HAIR = np.array([[22, 18, 18], [70, 45, 28], [120, 80, 45], [205, 175, 110], [150, 62, 30],
                  [175, 172, 170]], np.float32)
_IRIS = np.array([[70, 45, 25], [40, 30, 25], [70, 110, 160], [80, 120, 80], [120, 100, 60]], np.float32)


def _p(x: float, y: float) -> Tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _ax(a: float, b: float) -> Tuple[int, int]:
    return max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE)))


def _c(colour) -> Tuple[float, ...]:
    if np.ndim(colour) == 0:
        return (min(max(float(colour), 0.0), 255.0),)
    return tuple(min(max(float(v), 0.0), 255.0) for v in colour)


def _ellipse(img, centre, axes, colour, angle=0.0, start=0, end=360, thickness=-1):
    cv2.ellipse(img, _p(*centre), _ax(*axes), angle, start, end, _c(colour), thickness, cv2.LINE_AA, _SHIFT)


@dataclass(frozen=True)
class Identity:
    """The fixed structure of one synthetic identity (all lengths in pixels of the 112 frame)."""

    skin: np.ndarray
    hair: np.ndarray
    hair_style: int            # 0 short, 1 long, 2 bald, 3 fringe
    hairline: float
    face_axes: Tuple[float, float]
    face_y: float
    ear: float
    eye_half_spacing: float
    eye_dy: float
    eye_size: Tuple[float, float]
    iris: np.ndarray
    iris_radius: float
    brow: Tuple[float, float, float, int]   # gap above eye, half length, slope, thickness
    nose: Tuple[float, float]               # tip dy, half width
    mouth: Tuple[float, float, float]       # dy, half width, lip thickness
    lips: np.ndarray
    texture: np.ndarray                     # 8x8 mottling field
    texture_amount: float
    moles: np.ndarray                       # k x 3: x, y, radius
    glasses: bool
    beard: int                              # 0 none, 1 moustache, 2 full


def _make_identity(rng: np.random.Generator) -> Identity:
    u = rng.uniform
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * u() + rng.normal(0, 8, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 14, 3)
    iris = _IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 12, 3)
    lips = skin * u(0.55, 0.85) + np.array([60, 0, 5]) * u(0.2, 1.0)
    moles = np.stack([u(30, 82, 4), u(45, 100, 4), u(0.8, 1.8, 4)], 1)[: rng.poisson(1.5)]
    return Identity(
        skin=skin, hair=hair, hair_style=int(rng.integers(4)), hairline=u(25, 38),
        face_axes=(u(33, 41), u(43, 53)), face_y=u(62, 68), ear=u(5, 9),
        eye_half_spacing=u(15.0, 20.0), eye_dy=u(-2.5, 2.5), eye_size=(u(5.0, 8.0), u(0.38, 0.65)),
        iris=iris, iris_radius=u(2.0, 3.4),
        brow=(u(6, 10), u(8, 13), u(-0.25, 0.25), int(rng.integers(1, 5))),
        nose=(u(-3, 3), u(3.5, 8)), mouth=(u(-3, 3), u(11, 17), u(1.5, 4)), lips=lips,
        texture=rng.normal(0, 1, (8, 8)).astype(np.float32), texture_amount=u(0.03, 0.12),
        moles=moles, glasses=bool(u() < 0.15), beard=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
    )


class SyntheticFaceGenerator:
    """Deterministic face renderer: ``render(identity, index)`` depends only on ``(seed, identity, index)``."""

    def __init__(self, seed: int = 0, cache_size: int = 4096) -> None:
        self.seed = int(seed)
        self._cache: "OrderedDict[int, Identity]" = OrderedDict()
        self._cache_size = cache_size

    def identity(self, identity: int) -> Identity:
        """The fixed parameters of ``identity`` (cached)."""
        params = self._cache.get(identity)
        if params is None:
            params = _make_identity(np.random.default_rng([self.seed, int(identity), 0x1D]))
            self._cache[identity] = params
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return params

    def render(self, identity: int, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Image ``index`` of ``identity``: uint8 RGB 112x112 and its 5 landmarks (5x2, arcface order)."""
        ident = self.identity(identity)
        rng = np.random.default_rng([self.seed, int(identity), int(index), 0x1A])
        return _render(ident, rng)

    def __call__(self, identity: int, index: int) -> np.ndarray:
        return self.render(identity, index)[0]


def _render(ident: Identity, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    u = rng.uniform
    # -- per-image nuisance (always drawn in the same order, so the stream is stable) --
    yaw, pitch = u(-3, 3), u(-2, 2)
    angle, scale, shift = u(-9, 9), u(0.91, 1.09), u(-3.5, 3.5, 2)
    background = u(25, 235, 3)
    mouth_open = u(2, 7) if u() < 0.3 else 0.0
    smile = u(-1.5, 4)
    blink = u() < 0.08
    brow_raise = u(-1.5, 2.5)
    gaze = u(-1.2, 1.2, 2)
    gain, grad_amount, grad_dir = u(0.65, 1.2), u(0, 0.45), u(0, 2 * math.pi)
    cast = u(0.88, 1.12, 3)
    noise_sigma = u(0, 8)
    blur_sigma = u(0.5, 1.4) if u() < 0.3 else 0.0
    noise_field, noise_flip = int(rng.integers(len(_NOISE))), int(rng.integers(4))

    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = np.clip(background, 0, 255).astype(np.uint8)
    cx = SIZE / 2.0
    fx, fy = cx + yaw * 0.35, ident.face_y + pitch * 0.3       # outline moves less than features
    ax, ay = ident.face_axes
    ox, oy = yaw, pitch                                       # feature offset (pose)
    skin = ident.skin
    # hair behind the head, neck, ears, face
    if ident.hair_style == 1:
        _ellipse(img, (fx, fy - 2), (ax + 8, ay + 14), ident.hair)
    cv2.rectangle(img, _p(fx - ax * 0.45, fy + ay * 0.6), _p(fx + ax * 0.45, SIZE + 2), _c(skin * 0.85),
                  -1, cv2.LINE_AA, _SHIFT)
    for side in (-1, 1):
        _ellipse(img, (fx + side * ax * 0.98, ident.eye_dy + 58 + oy), (ident.ear * 0.6, ident.ear), skin * 0.88)
    if ident.hair_style != 2:
        _ellipse(img, (fx, fy - 6), (ax + 3, ay + 1), ident.hair)
    _ellipse(img, (fx, fy), (ax, ay), skin)

    # identity texture: low-frequency mottling inside the face + moles
    field = cv2.resize(ident.texture, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    face_mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(face_mask, _p(fx, fy), _ax(ax, ay), 0, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    shade = 1.0 + ident.texture_amount * field * face_mask
    for mx, my, mr in ident.moles:
        cv2.circle(img, _p(mx + ox, my + oy), int(mr * _ONE), _c(skin * 0.45), -1, cv2.LINE_AA, _SHIFT)

    # hair on top of the head (cap / fringe)
    if ident.hair_style in (0, 1, 3):
        depth = ident.hairline + (7 if ident.hair_style == 3 else 0) - (fy - ay)
        _ellipse(img, (fx, ident.hairline + (7 if ident.hair_style == 3 else 0) + oy * 0.5),
                 (ax + 1, max(depth, 2)), ident.hair, start=180, end=360)

    # eyes, brows
    eye_y = ARCFACE_DST[0, 1] + ident.eye_dy + oy
    ew, eh_ratio = ident.eye_size
    eh = ew * eh_ratio * (0.15 if blink else 1.0)
    gap, brow_half, slope, brow_thick = ident.brow
    eyes = []
    for side in (-1, 1):
        ex = cx + side * ident.eye_half_spacing + ox
        eyes.append((ex, eye_y))
        _ellipse(img, (ex, eye_y), (ew, eh), (245, 245, 240))
        if not blink:
            ir = min(ident.iris_radius, eh * 0.95)
            cv2.circle(img, _p(ex + gaze[0], eye_y + gaze[1] * 0.4), int(ir * _ONE), _c(ident.iris), -1,
                       cv2.LINE_AA, _SHIFT)
            cv2.circle(img, _p(ex + gaze[0], eye_y + gaze[1] * 0.4), int(ir * 0.45 * _ONE), (10, 10, 10), -1,
                       cv2.LINE_AA, _SHIFT)
        _ellipse(img, (ex, eye_y), (ew, eh), skin * 0.55, thickness=1)
        by = eye_y - gap - brow_raise
        inner, outer = ex - side * brow_half, ex + side * brow_half
        cv2.line(img, _p(inner, by + slope * brow_half), _p(outer, by - slope * brow_half),
                 _c(ident.hair * 0.7), brow_thick, cv2.LINE_AA, _SHIFT)
        if ident.glasses:
            _ellipse(img, (ex, eye_y), (ew + 4, ew * 0.75 + 2), (30, 30, 30), thickness=1)
    if ident.glasses:
        cv2.line(img, _p(eyes[0][0] + ew + 4, eye_y), _p(eyes[1][0] - ew - 4, eye_y), (30, 30, 30), 1,
                 cv2.LINE_AA, _SHIFT)

    # nose
    tip_dy, nose_half = ident.nose
    tip = (ARCFACE_DST[2, 0] + ox * 1.3, ARCFACE_DST[2, 1] + tip_dy + oy)
    bridge = np.array([_p(cx + ox - 2, eye_y + 4), _p(cx + ox + 2, eye_y + 4),
                       _p(tip[0] + nose_half, tip[1]), _p(tip[0] - nose_half, tip[1])], np.int32)
    cv2.fillConvexPoly(img, bridge, _c(skin * 0.88), cv2.LINE_AA, _SHIFT)
    for side in (-1, 1):
        _ellipse(img, (tip[0] + side * nose_half * 0.55, tip[1] + 1), (nose_half * 0.35, 1.2), skin * 0.45)

    # beard / moustache, mouth
    mouth_dy, mouth_half, lip = ident.mouth
    my = ARCFACE_DST[3, 1] + mouth_dy + oy
    mx = cx + ox
    if ident.beard == 2:
        _ellipse(img, (fx + ox * 0.5, fy + ay * 0.45), (ax * 0.8, ay * 0.5), ident.hair * 0.8, start=0, end=180)
    if ident.beard >= 1:
        _ellipse(img, (mx, my - lip - 2.5), (mouth_half + 2, 2.5), ident.hair * 0.8)
    corners = [(mx - mouth_half, my - smile * 0.5), (mx + mouth_half, my - smile * 0.5)]
    if mouth_open:
        _ellipse(img, (mx, my + mouth_open * 0.3), (mouth_half * 0.85, mouth_open), (60, 20, 25))
        _ellipse(img, (mx, my - mouth_open * 0.35), (mouth_half * 0.6, max(mouth_open * 0.3, 1)), (235, 235, 225))
    _ellipse(img, (mx, my - smile * 0.5), (mouth_half, max(lip + smile, 0.8)), ident.lips, start=0, end=180,
             thickness=max(1, int(round(lip))))
    _ellipse(img, (mx, my - smile * 0.5 - lip * 0.4), (mouth_half * 0.9, lip * 0.7), ident.lips * 1.05,
             start=180, end=360)

    # -- pose: one similarity warp about the eye centre --
    centre = (cx, eye_y)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += shift
    img = cv2.warpAffine(img, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    shade = cv2.warpAffine(shade.astype(np.float32), matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    landmarks = np.array([eyes[0], eyes[1], tip, corners[0], corners[1]], np.float64)
    landmarks = landmarks @ matrix[:, :2].T + matrix[:, 2]

    # -- lighting, colour cast, noise, blur --
    ramp = _RAMP_X * math.cos(grad_dir) + _RAMP_Y * math.sin(grad_dir)
    light = (gain * (1.0 + grad_amount * ramp) * shade)[..., None] * cast.astype(np.float32)
    noise = _NOISE[noise_field]
    noise = noise[::-1] if noise_flip & 1 else noise
    noise = noise[:, ::-1] if noise_flip & 2 else noise
    out = img.astype(np.float32) * light + noise * np.float32(noise_sigma)
    if blur_sigma:
        out = cv2.GaussianBlur(out, (0, 0), blur_sigma)
    return np.clip(out, 0, 255).astype(np.uint8), landmarks.astype(np.float32)


# A fixed bank of unit Gaussian noise fields (sampling 37k normals per image would dominate the cost).
_NOISE = np.random.default_rng(0x5EED).standard_normal((16, SIZE, SIZE, 3), dtype=np.float32)
_RAMP_Y, _RAMP_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE / 2.0) - 1.0


class SyntheticFaces(FaceDataset):
    """``num_identities`` x ``images_per_identity`` synthetic faces (labels ``i // images_per_identity``).

    Identity ``k`` of the dataset is generator identity ``identity_offset + k``; use a
    different ``identity_offset`` (see :data:`HELD_OUT_OFFSET`) for held-out identities.
    """

    def __init__(self, num_identities: int = 100, images_per_identity: int = 20, seed: int = 0,
                 identity_offset: int = 0, input_size: int = 112, transform: Optional[Callable] = None,
                 skip_bad_images: bool = False) -> None:
        super().__init__(input_size, transform, skip_bad_images)
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError("num_identities and images_per_identity must be >= 1")
        self.fit_mode = "resize"
        self.num_identities = int(num_identities)
        self.images_per_identity = int(images_per_identity)
        self.identity_offset = int(identity_offset)
        self.generator = SyntheticFaceGenerator(seed)
        self.labels = np.repeat(np.arange(self.num_identities, dtype=np.int64), self.images_per_identity)
        self.classes = [f"synth_{identity_offset + k:07d}" for k in range(self.num_identities)]

    def _load(self, index: int) -> np.ndarray:
        identity, image = divmod(index, self.images_per_identity)
        return self.generator(self.identity_offset + identity, image)

    def describe(self, index: int) -> str:
        identity, image = divmod(index, self.images_per_identity)
        return f"synthetic:{self.generator.seed}/{self.identity_offset + identity}/{image}"

    def _fingerprint_parts(self) -> Sequence[str]:
        return [f"v{GENERATOR_VERSION}", str(self.generator.seed), str(self.identity_offset),
                str(self.num_identities), str(self.images_per_identity)]


def _pair_plan(num_folds: int, pairs_per_fold: int, images_per_identity: int,
               rng: np.random.Generator) -> Tuple[list, list]:
    """Identity-disjoint folds: each fold has ``pairs_per_fold // 2`` same and the rest different pairs.

    Returns (same, diff) lists of ``(fold, (id_a, img_a), (id_b, img_b))`` with fold-local identity numbers.
    """
    same_n = pairs_per_fold // 2
    diff_n = pairs_per_fold - same_n
    same, diff = [], []
    for fold in range(num_folds):
        ids = same_n + 2 * diff_n  # every pair uses fresh identities: folds and pairs independent
        base = fold * ids
        for k in range(same_n):
            a, b = rng.choice(images_per_identity, 2, replace=False)
            same.append((fold, (base + k, int(a)), (base + k, int(b))))
        for k in range(diff_n):
            a, b = rng.integers(images_per_identity, size=2)
            diff.append((fold, (base + same_n + 2 * k, int(a)), (base + same_n + 2 * k + 1, int(b))))
    return same, diff


def synthetic_pair_set(num_pairs: int = 600, num_folds: int = 10, seed: int = 0,
                       identity_offset: int = HELD_OUT_OFFSET, images_per_identity: int = 20,
                       name: str = "synthetic", cache: bool = False):
    """A verification :class:`~facekd.data.pairs.PairSet` of synthetic held-out identities.

    ``num_pairs`` pairs in ``num_folds`` identity-disjoint folds (each fold: half same, half
    different, in that order); the images are rendered on demand (``cache`` keeps them).
    """
    from facekd.data.pairs import PairSet

    if num_pairs % num_folds:
        raise ValueError(f"num_pairs ({num_pairs}) must be a multiple of num_folds ({num_folds})")
    generator = SyntheticFaceGenerator(seed)
    rng = np.random.default_rng([seed, identity_offset, 0x9A])
    same, diff = _pair_plan(num_folds, num_pairs // num_folds, images_per_identity, rng)
    per_fold: Dict[int, list] = {}
    for fold, a, b in same:
        per_fold.setdefault(fold, []).append((a, b, True))
    for fold, a, b in diff:
        per_fold.setdefault(fold, []).append((a, b, False))
    keys: Dict[str, int] = {}
    pairs, issame, folds = [], [], []
    for fold in range(num_folds):
        for a, b, same_flag in per_fold[fold]:
            pair = []
            for identity, image in (a, b):
                key = f"{identity_offset + identity}/{image}"
                pair.append(keys.setdefault(key, len(keys)))
            pairs.append(pair)
            issame.append(same_flag)
            folds.append(fold)

    def render(key: str) -> np.ndarray:
        identity, image = key.split("/")
        return generator(int(identity), int(image))

    return PairSet(name, list(keys), np.asarray(pairs, np.int64), np.asarray(issame, bool),
                   np.asarray(folds, np.int64), render, align="none", cache=cache)


def write_synthetic_tree(root, num_identities: int = 20, images_per_identity: int = 5, seed: int = 0,
                         identity_offset: int = 0, num_folds: int = 10, pairs_per_fold: int = 0,
                         ext: str = ".jpg", quality: int = 95) -> Path:
    """Write synthetic faces as ``root/<name>/<name>_NNNN<ext>`` (LFW naming, 1-based) and ``root/pairs.txt``.

    ``pairs.txt`` is in LFW View 2 form (``"folds<TAB>n"`` header, then per fold ``n`` same
    and ``n`` different lines) over the written identities; ``pairs_per_fold=0`` picks the
    largest ``n`` the identities allow (at most 300).  Returns ``root``.
    """
    from facekd.data.image_io import write_image

    root = Path(root)
    generator = SyntheticFaceGenerator(seed)
    names = [f"synth_{identity_offset + k:07d}" for k in range(num_identities)]
    for k, name in enumerate(names):
        for image in range(images_per_identity):
            path = root / name / f"{name}_{image + 1:04d}{ext}"
            write_image(path, generator(identity_offset + k, image), quality)
    if images_per_identity >= 2 and num_identities >= 2:
        if not pairs_per_fold:
            pairs_per_fold = max(1, min(300, num_identities // num_folds))
        rng = np.random.default_rng([seed, identity_offset, 0x7B])
        lines = [f"{num_folds}\t{pairs_per_fold}"]
        for _fold in range(num_folds):
            for _ in range(pairs_per_fold):
                name = names[rng.integers(num_identities)]
                a, b = rng.choice(images_per_identity, 2, replace=False) + 1
                lines.append(f"{name}\t{a}\t{b}")
            for _ in range(pairs_per_fold):
                i, j = rng.choice(num_identities, 2, replace=False)
                a, b = rng.integers(images_per_identity, size=2) + 1
                lines.append(f"{names[i]}\t{a}\t{names[j]}\t{b}")
        (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root
