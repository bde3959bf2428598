"""Verification pair sets: the :class:`PairSet` contract and one reader per on-disk format.

==========================  ===================================================================
:mod:`.pair_set`             :class:`PairSet` (images, pairs, issame, folds, ``load(i)``) and the
                             helpers the readers share
:mod:`.lfw`                  LFW ``pairs.txt`` (View 1 or 2): :func:`lfw_pair_set`
:mod:`.insightface_bin`      insightface ``.bin`` pickles: :func:`bin_pair_set`, :func:`read_bin`
:mod:`.bin_unpickler`        the restricted unpickler ``.bin`` files are read with
:mod:`.agedb`                AgeDB-30 ``img1 img2 issame`` lists: :func:`agedb_pair_set`
:mod:`.cfp`                  CFP's official protocol folders (FP / FF): :func:`cfp_pair_set`
==========================  ===================================================================

The sources are registered by name in :data:`facekd.data.PAIR_SOURCES` (:mod:`facekd.data.sources`).
"""
from facekd.data.pairs.agedb import agedb_pair_set, parse_pair_list
from facekd.data.pairs.bin_unpickler import BinUnpickler
from facekd.data.pairs.cfp import cfp_pair_set
from facekd.data.pairs.insightface_bin import bin_pair_set, read_bin, write_bin
from facekd.data.pairs.lfw import lfw_pair_set, parse_lfw_pairs, view1_fold_order, write_lfw_pairs
from facekd.data.pairs.pair_set import ALIGN_MODES, PairSet, position_folds

__all__ = ["PairSet", "ALIGN_MODES", "position_folds", "lfw_pair_set", "parse_lfw_pairs", "view1_fold_order",
           "write_lfw_pairs", "bin_pair_set", "read_bin", "write_bin", "BinUnpickler", "agedb_pair_set",
           "parse_pair_list", "cfp_pair_set"]
