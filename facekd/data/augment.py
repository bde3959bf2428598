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
"""
from __future__ import annotations

import copy
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

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
