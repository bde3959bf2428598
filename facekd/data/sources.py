"""The ``TRAIN_SOURCES`` / ``PAIR_SOURCES`` registries and the builders used by commands."""
from __future__ import annotations

from typing import Any, Callable, Optional

from facekd.data.base import FaceDataset
from facekd.data.folders import FolderDataset
from facekd.data.pairs import PairSet, agedb_pair_set, bin_pair_set, cfp_pair_set, lfw_pair_set
from facekd.data.recordio import RecordIODataset
from facekd.data.synthetic import SyntheticFaces, synthetic_pair_set
from facekd.errors import ConfigError
from facekd.registry import Registry

#: Training sources; every factory takes the same keyword arguments (see :func:`build_train_dataset`).
TRAIN_SOURCES = Registry("training data source")
#: Verification pair sources: ``build(kind, path=..., name=..., **options) -> PairSet``.
PAIR_SOURCES = Registry("verification pair source")


def _require_root(source: str, root) -> None:
    if not root:
        raise ConfigError(f"data source {source!r} needs data.root (a folder)")


# Every source takes the same arguments.  ``num_identities``/``images_per_identity``/``seed``
# describe the synthetic data only; on-disk sources are subset with ``max_identities`` /
# ``max_images_per_identity`` instead (0/None = everything).

@TRAIN_SOURCES.register("folder")
def _folder(root=None, num_identities=None, images_per_identity=None, seed=0, skip_bad_images=False,
            input_size=112, transform=None, fit="none", max_identities=None,
            max_images_per_identity=None) -> FaceDataset:
    """Aligned identity folders (``root/<identity>/*.jpg``)."""
    _require_root("folder", root)
    return FolderDataset(root, input_size, transform, skip_bad_images, max_identities, max_images_per_identity,
                         fit)


@TRAIN_SOURCES.register("recordio")
def _recordio(root=None, num_identities=None, images_per_identity=None, seed=0, skip_bad_images=False,
              input_size=112, transform=None, fit="none", max_identities=None,
              max_images_per_identity=None) -> FaceDataset:
    """insightface ``train.rec``/``train.idx``."""
    _require_root("recordio", root)
    return RecordIODataset(root, input_size, transform, skip_bad_images, max_identities,
                           max_images_per_identity, fit)


@TRAIN_SOURCES.register("synthetic")
def _synthetic(root=None, num_identities=None, images_per_identity=None, seed=0, skip_bad_images=False,
               input_size=112, transform=None, fit="resize", max_identities=None,
               max_images_per_identity=None) -> FaceDataset:
    """Synthetic faces (``root`` unused); defaults 200 identities x 20 images."""
    return SyntheticFaces(num_identities or 200, images_per_identity or 20, seed, 0, input_size, transform,
                          skip_bad_images)


def build_train_dataset(data_cfg: Any, transform: Optional[Callable] = None) -> FaceDataset:
    """Build the training :class:`FaceDataset` named by ``data_cfg.source``.

    ``data_cfg`` is any object with (some of) the attributes ``source`` (default
    ``'synthetic'``), ``root``, ``num_identities``, ``images_per_identity``, ``seed``,
    ``skip_bad_images``, ``input_size`` and optionally ``fit`` (``'none'``/``'resize'``/``'center'``,
    for images that are not ``input_size`` square), ``max_identities`` and
    ``max_images_per_identity``.  ``num_identities``, ``images_per_identity`` and ``seed``
    only shape the synthetic source; ``folder``/``recordio`` use all their data unless the
    ``max_*`` limits are set.  ``transform`` replaces the dataset's default (``normalize_uint8``).
    """
    source = getattr(data_cfg, "source", None) or "synthetic"
    kwargs = dict(root=getattr(data_cfg, "root", None), num_identities=getattr(data_cfg, "num_identities", None),
                  images_per_identity=getattr(data_cfg, "images_per_identity", None),
                  seed=getattr(data_cfg, "seed", 0) or 0, skip_bad_images=bool(getattr(data_cfg, "skip_bad_images", False)),
                  input_size=getattr(data_cfg, "input_size", 112) or 112, transform=transform)
    for optional in ("fit", "max_identities", "max_images_per_identity"):
        if getattr(data_cfg, optional, None):
            kwargs[optional] = getattr(data_cfg, optional)
    if source not in TRAIN_SOURCES:
        raise ConfigError(f"unknown data.source {source!r}; known: {', '.join(TRAIN_SOURCES)}")
    return TRAIN_SOURCES.build(source, **kwargs)


@PAIR_SOURCES.register("lfw")
def _lfw(path, name="lfw", **options) -> PairSet:
    """LFW ``pairs.txt`` (View 1 or 2); options: ``root``, ``align``, ``cache``, ``check_files``..."""
    return lfw_pair_set(path, name=name, **options)


@PAIR_SOURCES.register("bin")
def _bin(path, name=None, **options) -> PairSet:
    """insightface ``.bin``."""
    return bin_pair_set(path, name=name, **options)


@PAIR_SOURCES.register("agedb")
def _agedb(path, name="agedb_30", **options) -> PairSet:
    """AgeDB-30 pair list (``img1 img2 issame``)."""
    return agedb_pair_set(path, name=name, **options)


@PAIR_SOURCES.register("cfp_fp")
def _cfp_fp(path, name="cfp_fp", **options) -> PairSet:
    """CFP frontal-profile from the official ``Protocol/``."""
    return cfp_pair_set(path, "FP", name=name, **options)


@PAIR_SOURCES.register("cfp_ff")
def _cfp_ff(path, name="cfp_ff", **options) -> PairSet:
    """CFP frontal-frontal from the official ``Protocol/``."""
    return cfp_pair_set(path, "FF", name=name, **options)


@PAIR_SOURCES.register("synthetic")
def _synthetic_pairs(path=None, name="synthetic", **options) -> PairSet:
    """Synthetic held-out identities (``path`` unused); options of :func:`synthetic_pair_set`."""
    return synthetic_pair_set(name=name, **options)


def build_pair_set(name: str, kind: str, path=None, **options) -> PairSet:
    """Build the verification :class:`PairSet` ``name`` from source ``kind`` at ``path``.

    ``options`` are the source's (e.g. ``align='center'``, ``cache=True``, ``root=...``).
    """
    if kind not in PAIR_SOURCES:
        raise ConfigError(f"unknown pair source {kind!r}; known: {', '.join(PAIR_SOURCES)}")
    if path is None and kind != "synthetic":
        raise ConfigError(f"pair source {kind!r} ({name}) needs a path")
    if "name" in options:
        raise TypeError("pass the pair set's name as build_pair_set's first argument, not as an option")
    # Registry.build's own first parameter is ``name`` (the registered name), so the set's
    # name is assigned afterwards instead of being passed through.
    pair_set = PAIR_SOURCES.build(kind, path=path, **options)
    pair_set.name = name
    return pair_set
