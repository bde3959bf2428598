"""Face alignment: the 5-point arcface template, similarity warps and MTCNN detection.

* :func:`arcface_template` / :func:`estimate_similarity` / :func:`warp_face` — pure geometry:
  the least-squares similarity (Umeyama, as insightface's ``face_align``) that maps five
  landmarks (eyes, nose tip, mouth corners) onto the template, and the 112x112 warp.
* :func:`center_crop` — the deterministic fallback: a centred square, then a resize.
* :class:`FaceAligner` — MTCNN (facenet-pytorch, shipped weights, CPU by default) choosing
  the largest, most central face, then :func:`warp_face`; the photo is bordered before
  detection (``pad``, :data:`PAD_MODES`), trying each of several borders in turn until one
  finds a face (:meth:`FaceAligner.locate` says which).
* :func:`align_tree` lives in :mod:`facekd.data.align_tree` (parallel, resumable).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

#: insightface's arcface template for 112x112: left eye, right eye, nose tip, mouth left, mouth right.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def arcface_template(size: int = 112, margin: float = 0.0) -> np.ndarray:
    """The 5-point template for a ``size`` x ``size`` output (float32 ``5x2``).

    Sizes that are multiples of 112 scale the template; multiples of 128 scale it and shift
    it 8 px right per 128, as insightface does.  ``margin`` (output pixels) shrinks the
    template about the image centre, leaving that much more context on each side.
    """
    if size % 112 == 0:
        dst = ARCFACE_DST * (size / 112.0)
    elif size % 128 == 0:
        ratio = size / 128.0
        dst = ARCFACE_DST * ratio + np.array([8.0 * ratio, 0.0], dtype=np.float32)
    else:
        dst = ARCFACE_DST * (size / 112.0)
    if margin:
        if not 0 <= margin < size / 2:
            raise ValueError(f"margin must be in [0, {size / 2}), got {margin}")
        centre = size / 2.0
        dst = centre + (dst - centre) * ((size - 2.0 * margin) / size)
    return dst.astype(np.float32)


def estimate_similarity(src: np.ndarray, dst: np.ndarray, method: str = "umeyama") -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``.

    ``method='umeyama'`` is the closed-form least-squares fit (deterministic);
    ``'lmeds'`` uses :func:`cv2.estimateAffinePartial2D` with LMEDS (robust to one bad point).
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets of >= 2 points, got {src.shape} and {dst.shape}")
    if method == "lmeds":
        matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
        if matrix is None:
            raise ValueError("cv2.estimateAffinePartial2D found no transform")
        return matrix.astype(np.float64)
    if method != "umeyama":
        raise ValueError(f"unknown method {method!r}; use 'umeyama' or 'lmeds'")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    signs = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    src_var = (src_c ** 2).sum() / len(src)
    if src_var == 0:
        raise ValueError("landmarks are all at one point")
    scale = float((singular * signs).sum() / src_var)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to ``Nx2`` points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112, margin: float = 0.0,
              method: str = "umeyama") -> np.ndarray:
    """Warp ``image`` so that its 5 ``landmarks`` land on the arcface template (``size`` x ``size``)."""
    matrix = estimate_similarity(landmarks, arcface_template(size, margin), method)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def center_crop(image: np.ndarray, fraction: float = 0.53, size: int = 112,
                y_shift: float = -0.026) -> np.ndarray:
    """A centred square of side ``fraction * min(H, W)``, moved by ``y_shift * H``, resized to ``size``.

    The defaults approximate the arcface template on LFW's 250x250 deep-funneled images
    (measured with MTCNN: eye distance ~41.5 px, eye line ~6 px above centre).
    Deterministic and fast; used when no detector is wanted or none found a face.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    height, width = image.shape[:2]
    side = max(1, int(round(fraction * min(height, width))))
    # window of `side` pixels centred on the image centre (pixel-centre coordinates)
    x0 = int(round((width - side) / 2.0))
    y0 = int(round((height - side) / 2.0 + y_shift * height))
    pad_top, pad_left = max(0, -y0), max(0, -x0)
    pad_bottom, pad_right = max(0, y0 + side - height), max(0, x0 + side - width)
    if pad_top or pad_left or pad_bottom or pad_right:
        image = cv2.copyMakeBorder(image, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_CONSTANT, value=0)
    crop = image[y0 + pad_top:y0 + pad_top + side, x0 + pad_left:x0 + pad_left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


#: how the border added before detection is filled: black, or the edge pixels repeated
PAD_MODES = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def pad_photo(image: np.ndarray, pad: float, mode: str = "constant") -> Tuple[np.ndarray, int]:
    """``image`` with a border of ``round(pad * longer side)`` pixels on every side (filled per
    :data:`PAD_MODES`), and that border in pixels."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}; known: {', '.join(PAD_MODES)}")
    border = int(round(pad * max(image.shape[:2])))
    if not border:
        return image, 0
    return cv2.copyMakeBorder(image, border, border, border, border, PAD_MODES[mode], value=0), border


@dataclass
class Located:
    """The 5 ``landmarks`` (5x2, pixels of the photo) of the face to align, and how they were found:
    ``attempt`` 0 is the first try (the first pad for MTCNN), 1.. a retry; ``pad`` the border used."""

    landmarks: np.ndarray
    attempt: int = 0
    pad: float = 0.0


@dataclass
class Detection:
    """One detected face: ``box`` (x1, y1, x2, y2), detector ``score`` and ``landmarks`` (5x2)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def choose_face(detections: Sequence[Detection], image_shape: Tuple[int, ...]) -> Optional[Detection]:
    """The largest, most central face: maximises ``area - 2 * squared offset from the centre``.

    (insightface's rule for picking one face per image.)
    """
    if not detections:
        return None
    height, width = image_shape[:2]
    centre = np.array([width / 2.0, height / 2.0])

    def value(d: Detection) -> float:
        x1, y1, x2, y2 = d.box
        offset = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0]) - centre
        return float((x2 - x1) * (y2 - y1) - 2.0 * (offset ** 2).sum())

    return max(detections, key=value)


class FaceAligner:
    """MTCNN detection + 5-point arcface alignment.

    ``FaceAligner(size=112, margin=0, device='cpu', min_face_size=20,
    thresholds=(0.6, 0.7, 0.7), min_score=0.9, pad=0.25, pad_mode='constant')``; :meth:`align`
    returns the ``size`` x ``size`` RGB face, or ``None`` when no face is found.  Images are
    padded by ``pad`` x their longer side (black; ``pad_mode='replicate'`` repeats the edge)
    before detection: MTCNN misplaces landmarks of faces that fill the frame (tight crops such
    as CFP's or already aligned faces).  ``pad`` may be a sequence: each border is tried in
    turn until one finds a face.  On 200 FairFace crops (224 px, face ~ half the frame) pad
    0.25 missed 8 and pad 0 missed 6, but only 2 were missed by both, so ``(0.25, 0)``
    aligns 198.  Detection runs with ``threads``
    torch threads (``None``: leave the setting alone): MTCNN's many small convolutions gain
    nothing from more threads and slow down many-fold when the cores are busy.  MTCNN is created lazily (first use) and is
    safe to share between threads.
    """

    def __init__(self, size: int = 112, margin: float = 0.0, device: str = "cpu",
                 min_face_size: int = 20, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 min_score: float = 0.9, pad: Union[float, Sequence[float]] = 0.25, pad_mode: str = "constant",
                 threads: Optional[int] = 1) -> None:
        self.size = size
        self.pads = tuple(float(p) for p in (pad if isinstance(pad, (list, tuple)) else (pad,)))
        if not self.pads or min(self.pads) < 0:
            raise ValueError(f"pad must be one or more fractions >= 0, got {pad!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"unknown pad mode {pad_mode!r}; known: {', '.join(PAD_MODES)}")
        self.pad = self.pads[0]
        self.pad_mode = pad_mode
        self.threads = threads
        self.margin = margin
        self.device = device
        self.min_face_size = min_face_size
        self.thresholds = list(thresholds)
        self.min_score = min_score
        self._mtcnn = None
        self._lock = threading.Lock()

    @property
    def mtcnn(self):
        """The underlying ``facenet_pytorch.MTCNN`` (created on first use, ``keep_all=True``)."""
        if self._mtcnn is None:
            with self._lock:
                if self._mtcnn is None:
                    from facenet_pytorch import MTCNN

                    self._mtcnn = MTCNN(keep_all=True, device=self.device, min_face_size=self.min_face_size,
                                        thresholds=self.thresholds, post_process=False)
        return self._mtcnn

    def unusable(self, image: np.ndarray) -> Optional[str]:
        """Why no face can be searched for in ``image`` (``None`` when one can).

        A photo whose shorter side is below ``min_face_size`` cannot hold a face MTCNN looks
        for (and MTCNN itself fails on it: its image pyramid is empty); so is anything that is
        not a non-empty uint8 RGB ``H x W x 3`` array.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or not image.size:
            return f"expected a uint8 RGB HxWx3 photo, got {image.dtype} {list(image.shape)}"
        height, width = image.shape[:2]
        if min(height, width) < self.min_face_size:
            return (f"photo too small to hold a face: {width}x{height} px, the smallest face searched "
                    f"for is {self.min_face_size} px")
        return None

    def detect(self, image: np.ndarray, pad: Optional[float] = None) -> List[Detection]:
        """All faces in uint8 RGB ``image`` with score >= ``min_score`` (none in an
        :meth:`unusable` image), detected with a border of ``pad`` (default: the first of
        :attr:`pads`)."""
        import torch

        if self.unusable(image) is not None:
            return []
        padded, border = pad_photo(image, self.pad if pad is None else pad, self.pad_mode)
        previous = torch.get_num_threads()
        change = self.threads is not None and self.threads != previous
        if change:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                boxes, scores, landmarks = self.mtcnn.detect(np.ascontiguousarray(padded), landmarks=True)
        finally:
            if change:
                torch.set_num_threads(previous)
        if boxes is None:
            return []
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - border
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2) - border
        return [Detection(b, float(s), l) for b, s, l in zip(boxes, scores, landmarks) if s >= self.min_score]

    def locate(self, image: np.ndarray, rel: str = "") -> Optional[Located]:
        """The chosen face's landmarks with the first of :attr:`pads` that finds one, or ``None``
        (``rel``, the photo's name, is unused: the interface of a landmark-file aligner)."""
        for attempt, pad in enumerate(self.pads):
            face = choose_face(self.detect(image, pad), image.shape)
            if face is not None:
                return Located(face.landmarks, attempt, pad)
        return None

    def landmarks(self, image: np.ndarray) -> Optional[np.ndarray]:
        """The 5 landmarks (5x2, x/y in pixels) of the chosen face, or ``None``."""
        found = self.locate(image)
        return None if found is None else found.landmarks

    def align(self, image: np.ndarray) -> Optional[np.ndarray]:
        """The aligned ``size`` x ``size`` face, or ``None`` when MTCNN finds no face."""
        points = self.landmarks(image)
        return None if points is None else warp_face(image, points, self.size, self.margin)
