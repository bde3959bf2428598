"""How a teacher sees a face: its input size, 5-point template, channel order and normalisation.

The student's faces are 112x112 arcface-template crops (:mod:`facekd.preprocess`).  A
pretrained teacher was trained on *its own* crops — dlib's ResNet on 150x150 chips laid out
by dlib's shape model, a third-party ONNX embedder on whatever its authors used — and loses
accuracy when handed a face framed another way (measured on LFW View 2, folds 1-4: dlib on
our 112 px crops simply resized to 150 px, 86.3 %; on 150 px chips warped from the same
crops by the similarity below, 98.6 %).

A :class:`Framing` declares the teacher's layout as the five landmarks (eyes, nose tip,
mouth corners, in the order of :data:`facekd.data.align.ARCFACE_DST`) in its own input
pixels.  :meth:`Framing.frame` derives the teacher's crop from the student's aligned face by
the one fixed similarity that maps the arcface template onto the teacher's template; pixels
the teacher's crop needs beyond the 112x112 face are the replicated edge.  When a teacher
needs more context than the 112 px crop holds, align a larger canvas instead
(``facekd align --size/--margin``).

The arcface template at the teacher's own size is a plain resize (insightface models and
facekd's own teachers); it is done on the normalised batch with
:func:`facekd.preprocess.resize_batch`, exactly as training and evaluation resize today.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Dict

import numpy as np
import torch

from facekd.errors import ConfigError
from facekd.preprocess import INPUT_SIZE, RESIZE_METHOD, resize_batch

#: dlib's 150x150 chip (``get_face_chip``, padding 0.25) as MTCNN's five points: the mean
#: over 228 LFW faces of the landmarks MTCNN finds in dlib's own chips.
DLIB_CHIP_150 = np.array([[47.47, 45.36], [102.15, 45.52], [74.23, 77.30], [50.89, 104.93], [98.47, 105.06]],
                         dtype=np.float32)


def _arcface(size: int) -> np.ndarray:
    from facekd.data.align import arcface_template

    return arcface_template(size)


#: template name -> ``points(size) -> float32 [5, 2]`` in a ``size`` x ``size`` input
TEMPLATES: Dict[str, Callable[[int], np.ndarray]] = {
    "arcface": _arcface,
    "dlib": lambda size: DLIB_CHIP_150 * (size / 150.0),
}

#: how a warped crop is made (part of the cache key)
WARP_METHOD = "cv2.warpAffine-linear-replicate"


@dataclass(frozen=True)
class Framing:
    """A teacher's view of a face.

    Attributes:
        input_size: side of the teacher's square input in pixels.
        template: a :data:`TEMPLATES` name: where the five landmarks lie in that input.
        channel_order: ``"RGB"`` or ``"BGR"``.
        mean, std: the teacher's input is ``(pixel - mean) / std`` (pixels in 0..255);
            insightface and facekd use 127.5 / 127.5.
    """
    input_size: int = INPUT_SIZE
    template: str = "arcface"
    channel_order: str = "RGB"
    mean: float = 127.5
    std: float = 127.5

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ConfigError(f"teacher framing: unknown template {self.template!r}; known: {sorted(TEMPLATES)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"teacher framing: channel_order must be RGB or BGR, got {self.channel_order!r}")
        if int(self.input_size) < 8:
            raise ConfigError(f"teacher framing: input_size must be at least 8, got {self.input_size}")
        if float(self.std) <= 0:
            raise ConfigError(f"teacher framing: std must be positive, got {self.std}")

    @property
    def is_resize(self) -> bool:
        """True when the teacher's crop is the student's crop, only resized (arcface template)."""
        return self.template == "arcface"

    def points(self) -> np.ndarray:
        """The template's five landmarks in the teacher's input pixels (float32 ``[5, 2]``)."""
        return TEMPLATES[self.template](int(self.input_size)).astype(np.float32)

    def matrix(self) -> np.ndarray:
        """The 2x3 similarity from the student's 112 px crop to the teacher's input."""
        from facekd.data.align import estimate_similarity

        return estimate_similarity(_arcface(INPUT_SIZE), self.points())

    def describe(self) -> str:
        """A stable text of everything that changes the teacher's input (for cache keys)."""
        points = ",".join(f"{v:.3f}" for v in self.points().reshape(-1))
        how = f"resize={RESIZE_METHOD}" if self.is_resize else f"warp={WARP_METHOD}"
        return (f"framing:{self.template}[{points}]|size={int(self.input_size)}|{how}|"
                f"order={self.channel_order}|mean={float(self.mean)}|std={float(self.std)}")

    def digest(self) -> str:
        """Short SHA-256 of :meth:`describe`."""
        return hashlib.sha256(self.describe().encode()).hexdigest()[:16]

    def frame(self, faces: np.ndarray) -> np.ndarray:
        """The teacher's uint8 crops ``[N, S, S, 3]`` (RGB) of aligned 112x112 faces ``[N, 112, 112, 3]``.

        For the arcface template the faces are returned as they are (:meth:`normalize`
        resizes them); otherwise each face is warped by :meth:`matrix`.
        """
        faces = np.asarray(faces)
        if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected uint8 aligned faces N x {INPUT_SIZE} x {INPUT_SIZE} x 3, got "
                             f"{faces.dtype} {faces.shape}")
        if self.is_resize:
            return faces
        import cv2

        size, matrix = int(self.input_size), self.matrix()
        return np.stack([cv2.warpAffine(face, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE) for face in faces])

    def normalize(self, frames: torch.Tensor, layout: str = "NCHW") -> torch.Tensor:
        """Float teacher input from :meth:`frame`'s uint8 ``N x S x S x 3`` RGB crops.

        Channel order and ``(x - mean) / std`` per this framing; resized to ``input_size``
        when the crops are another size (the arcface template); ``layout`` ``"NHWC"`` keeps
        channels last.
        """
        frames = torch.as_tensor(frames)
        batch = frames.permute(0, 3, 1, 2).float()
        if self.channel_order == "BGR":
            batch = batch.flip(1)
        batch = (batch - float(self.mean)) / float(self.std)
        batch = resize_batch(batch, int(self.input_size))
        return batch.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else batch.contiguous()


def framing_from_config(config: Any, defaults: Framing) -> Framing:
    """``defaults`` with what a config gives (a mapping or a dataclass; ``None`` keeps the default)."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    values = {k: v for k, v in (config or {}).items() if v is not None}
    unknown = sorted(set(values) - set(Framing.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"teacher framing: unknown key(s) {unknown}; known: {sorted(Framing.__dataclass_fields__)}")
    merged = {**defaults.__dict__, **values}
    return Framing(int(merged["input_size"]), str(merged["template"]), str(merged["channel_order"]).upper(),
                   float(merged["mean"]), float(merged["std"]))
