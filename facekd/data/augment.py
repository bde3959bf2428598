"""Training-view augmentations of aligned 112x112 faces (the ``augment:`` list of a config).

Every augmentation is a registered class in :data:`AUGMENTATIONS` whose instances are called
``aug(image, rng, partner)`` -> image: ``image`` is a uint8 RGB ``H x W x 3`` face, ``rng`` a
``numpy.random.Generator`` (every random choice comes from it, so a view is reproducible from
its generator's seed), and ``partner()`` returns another augmented face of the training set
(used by :class:`Mixup`; the others ignore it).  Adding an augmentation is one registered class.

A config's list becomes one :class:`ViewAugment` through :func:`build_augment`::

    augment:
      - {name: shift_scale, max_shift: 0.08, scale: [0.9, 1.1], max_rotation: 10}
      - {name: colour_jitter, brightness: 0.3, contrast: 0.3, saturation: 0.3}
      - {name: mixup, prob: 0.5, alpha: 1.0}

The training task applies it to the (flipped) clean face *before* any low-resolution
degradation, and the teacher is shown exactly that view (:mod:`facekd.training.teaching`):
consistent teaching in the sense of Beyer et al. (CVPR 2022).

Each augmentation also works on a whole batch where the faces are (``data.on_device``,
:mod:`facekd.training.device_views`): :meth:`Augmentation.draw_batch` draws every face's
parameters from one generator, :meth:`Augmentation.apply_batch` applies them to a float
``B x 3 x H x W`` batch of 0..255 pixels on any device, the same operation as ``__call__``
(``shift_scale`` by ``grid_sample``: bilinear, mirrored border, like the OpenCV warp).
"""
from __future__ import annotations

import copy
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from facekd.errors import ConfigError
from facekd.registry import Registry

#: ``augment:`` entry name -> augmentation class
AUGMENTATIONS = Registry("augmentation")

Partner = Optional[Callable[[], np.ndarray]]


class Augmentation:
    """Base class: ``__call__(image, rng, partner) -> image`` (uint8 RGB, same shape)."""

    #: registry name (for messages and fingerprints)
    aug_name = "augmentation"
    #: draws another face through ``partner`` (the view pipeline then provides one)
    needs_partner = False

    def __call__(self, image: np.ndarray, rng: np.random.Generator, partner: Partner = None) -> np.ndarray:
        raise NotImplementedError

    def draw_batch(self, rng: np.random.Generator, count: int) -> Dict[str, np.ndarray]:
        """The random parameters of ``count`` faces (arrays of length ``count``), drawn from ``rng``."""
        raise NotImplementedError

    def apply_batch(self, images: torch.Tensor, params: Dict[str, torch.Tensor],
                    partners: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``images`` (float ``B x 3 x H x W``, 0..255) augmented with :meth:`draw_batch`'s ``params``
        (as tensors on the images' device); ``partners``: the faces :class:`Mixup` mixes in."""
        raise NotImplementedError


def _rounded(images: torch.Tensor) -> torch.Tensor:
    """What ``np.clip(np.rint(x), 0, 255)`` of a uint8 result gives, kept as float."""
    return images.round().clamp_(0, 255)


def _per_face(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, 1, 1, 1).to(torch.float32)


def _check_range(name: str, low: float, high: float, what: str) -> None:
    if not low <= high:
        raise ConfigError(f"augment {name}: {what} must be [low, high] with low <= high, got [{low}, {high}]")


@AUGMENTATIONS.register("shift_scale")
class ShiftScale(Augmentation):
    """A random similarity warp of the aligned face: shift, scale and rotation about the centre.

    The random-resized-crop of face recognition (where the face is already aligned): a crop
    of side ``112 / s`` at a shifted centre, rotated, resized back to the input size.

    Args:
        max_shift: largest shift of the centre, as a fraction of the side, in x and y (uniform).
        scale: ``[low, high]`` zoom factor (> 1 zooms in).
        max_rotation: largest rotation in degrees (uniform in ``[-r, r]``).
        prob: share of faces warped (the rest stay as they are).
    """

    aug_name = "shift_scale"

    def __init__(self, max_shift: float = 0.08, scale: Sequence[float] = (0.9, 1.1), max_rotation: float = 10.0,
                 prob: float = 1.0) -> None:
        self.max_shift, self.max_rotation, self.prob = float(max_shift), float(max_rotation), float(prob)
        self.scale = (float(scale[0]), float(scale[1]))
        _check_range(self.aug_name, *self.scale, "scale")
        if self.scale[0] <= 0 or self.max_shift < 0 or self.max_rotation < 0:
            raise ConfigError(f"augment {self.aug_name}: scale must be > 0, max_shift and max_rotation >= 0")

    def __call__(self, image: np.ndarray, rng: np.random.Generator, partner: Partner = None) -> np.ndarray:
        import cv2

        # every draw happens whether or not the face is warped: the generator's later draws stay put
        apply = rng.random() < self.prob
        shift = rng.uniform(-self.max_shift, self.max_shift, size=2)
        scale = rng.uniform(*self.scale)
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        if not apply:
            return image
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        matrix[:, 2] += shift * np.array([w, h])
        return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    def draw_batch(self, rng: np.random.Generator, count: int) -> Dict[str, np.ndarray]:
        return {"apply": rng.random(count) < self.prob,
                "shift": rng.uniform(-self.max_shift, self.max_shift, size=(count, 2)),
                "scale": rng.uniform(*self.scale, size=count),
                "angle": rng.uniform(-self.max_rotation, self.max_rotation, size=count)}

    def apply_batch(self, images: torch.Tensor, params: Dict[str, torch.Tensor],
                    partners: Optional[torch.Tensor] = None) -> torch.Tensor:
        # OpenCV's forward map about the centre, in grid coordinates (-1..1): u' = A u + 2 shift with
        # A = s [[cos, sin], [-sin, cos]]; grid_sample needs the inverse, u = A^-1 (u' - 2 shift)
        apply = params["apply"].to(torch.float64)                 # 0: the face stays as it is
        radians = params["angle"].to(torch.float64) * (np.pi / 180.0) * apply
        scale = 1.0 + (params["scale"].to(torch.float64) - 1.0) * apply
        shift = params["shift"].to(torch.float64) * apply[:, None]
        cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
        inverse = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)     # A^-1
        offset = -(inverse @ (2.0 * shift)[:, :, None])
        theta = torch.cat([inverse, offset], 2).to(images.dtype)
        grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
        warped = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                                                 align_corners=False)
        return _rounded(warped)


@AUGMENTATIONS.register("colour_jitter")
class ColourJitter(Augmentation):
    """Random brightness, contrast and saturation (each factor uniform in ``[1 - a, 1 + a]``).

    Args:
        brightness, contrast, saturation: the largest relative change of each.
        prob: share of faces jittered.
    """

    aug_name = "colour_jitter"

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3,
                 prob: float = 1.0) -> None:
        self.amounts = np.array([brightness, contrast, saturation], dtype=np.float64)
        self.prob = float(prob)
        if (self.amounts < 0).any() or (self.amounts >= 1).any():
            raise ConfigError(f"augment {self.aug_name}: brightness, contrast, saturation must be in [0, 1)")

    def __call__(self, image: np.ndarray, rng: np.random.Generator, partner: Partner = None) -> np.ndarray:
        apply = rng.random() < self.prob
        b, c, s = rng.uniform(1.0 - self.amounts, 1.0 + self.amounts)
        if not apply:
            return image
        x = image.astype(np.float32) * b
        grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = (x - grey.mean()) * c + grey.mean()
        grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        x = (x - grey) * s + grey
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def draw_batch(self, rng: np.random.Generator, count: int) -> Dict[str, np.ndarray]:
        return {"apply": rng.random(count) < self.prob,
                "factors": rng.uniform(1.0 - self.amounts, 1.0 + self.amounts, size=(count, 3))}

    def apply_batch(self, images: torch.Tensor, params: Dict[str, torch.Tensor],
                    partners: Optional[torch.Tensor] = None) -> torch.Tensor:
        factors = torch.where(params["apply"][:, None], params["factors"], torch.ones_like(params["factors"]))
        brightness, contrast, saturation = (_per_face(factors[:, i]) for i in range(3))
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
        x = images * brightness
        mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        grey = (x * weights).sum(1, keepdim=True)
        return _rounded((x - grey) * saturation + grey)


@AUGMENTATIONS.register("mixup")
class Mixup(Augmentation):
    """Mix the face with another augmented training face: ``lam * x + (1 - lam) * x'``.

    ``lam = max(l, 1 - l)`` with ``l ~ Beta(alpha, alpha)``, so the sample's own face
    dominates and its label stays meaningful for label losses.  The teacher sees the same
    mixed image as the student (function matching, Beyer et al. 2022).

    Args:
        prob: share of faces mixed.
        alpha: Beta distribution parameter.
    """

    aug_name = "mixup"
    needs_partner = True

    def __init__(self, prob: float = 0.5, alpha: float = 1.0) -> None:
        self.prob, self.alpha = float(prob), float(alpha)
        if self.alpha <= 0 or not 0 <= self.prob <= 1:
            raise ConfigError(f"augment {self.aug_name}: alpha must be > 0 and prob in [0, 1]")

    def __call__(self, image: np.ndarray, rng: np.random.Generator, partner: Partner = None) -> np.ndarray:
        apply = rng.random() < self.prob
        lam = rng.beta(self.alpha, self.alpha)
        if not apply or partner is None:
            return image
        lam = max(lam, 1.0 - lam)
        other = partner().astype(np.float32)
        return np.clip(np.rint(lam * image.astype(np.float32) + (1.0 - lam) * other), 0, 255).astype(np.uint8)

    def draw_batch(self, rng: np.random.Generator, count: int) -> Dict[str, np.ndarray]:
        lam = rng.beta(self.alpha, self.alpha, size=count)
        return {"apply": rng.random(count) < self.prob, "lam": np.maximum(lam, 1.0 - lam)}

    def apply_batch(self, images: torch.Tensor, params: Dict[str, torch.Tensor],
                    partners: Optional[torch.Tensor] = None) -> torch.Tensor:
        if partners is None:
            return images
        lam = _per_face(torch.where(params["apply"], params["lam"], torch.ones_like(params["lam"])))
        return _rounded(lam * images + (1.0 - lam) * partners)


class ViewAugment:
    """The configured augmentations, applied in order: ``view(image, rng, partner)``.

    ``specs`` are the config's entries (kept for :meth:`fingerprint`: a view cache is keyed
    by them).  An empty list is the identity.
    """

    def __init__(self, augmentations: Sequence[Augmentation], specs: Sequence[Mapping[str, Any]] = ()) -> None:
        self.augmentations = list(augmentations)
        self.specs = [dict(s) for s in specs]

    def __bool__(self) -> bool:
        return bool(self.augmentations)

    @property
    def needs_partner(self) -> bool:
        """Some augmentation mixes in another face."""
        return any(a.needs_partner for a in self.augmentations)

    def __call__(self, image: np.ndarray, rng: np.random.Generator, partner: Partner = None) -> np.ndarray:
        for augmentation in self.augmentations:
            image = augmentation(image, rng, partner)
        return image

    def without_partner(self) -> "ViewAugment":
        """The same list without the augmentations that mix in another face (for that face)."""
        keep = [(a, s) for a, s in zip(self.augmentations, self.specs) if not a.needs_partner]
        return ViewAugment([a for a, _ in keep], [s for _, s in keep])

    def fingerprint(self) -> str:
        """Text that changes with the list (names and parameters)."""
        return json.dumps(self.specs, sort_keys=True)

    def draw_batch(self, rng: np.random.Generator, count: int) -> List[Dict[str, np.ndarray]]:
        """Each augmentation's :meth:`Augmentation.draw_batch` for ``count`` faces, in order."""
        return [augmentation.draw_batch(rng, count) for augmentation in self.augmentations]

    def apply_batch(self, images: torch.Tensor, params: Sequence[Dict[str, Any]],
                    partners: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`draw_batch`'s parameters applied in order (numpy arrays moved to the images' device)."""
        for augmentation, drawn in zip(self.augmentations, params):
            moved = {key: torch.as_tensor(value).to(images.device, non_blocking=True) for key, value in drawn.items()}
            images = augmentation.apply_batch(images, moved, partners)
        return images


def build_augment(specs: Optional[Sequence[Mapping[str, Any]]]) -> ViewAugment:
    """The :class:`ViewAugment` of a config's ``augment:`` list (``[{name: ..., **params}, ...]``).

    Raises:
        ConfigError: an entry without a name, an unknown name or parameter, a bad value;
            the message names the entry (``augment[i]``).
    """
    augmentations: List[Augmentation] = []
    for index, spec in enumerate(specs or ()):
        where = f"augment[{index}]"
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(f"{where}: expected a mapping with a 'name', got {spec!r}")
        params: Dict[str, Any] = copy.deepcopy(dict(spec))
        name = params.pop("name")
        if name not in AUGMENTATIONS:
            raise ConfigError(f"{where}: unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
        try:
            augmentations.append(AUGMENTATIONS.build(name, **params))
        except (TypeError, ConfigError) as error:
            raise ConfigError(f"{where}: {error}") from None
    return ViewAugment(augmentations, list(specs or ()))
