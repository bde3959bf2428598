"""Images on disk -> training datasets, verification pair sets, samplers, degradations.

See docs/DESIGN.md ("Data") for the contracts.  Everything public is re-exported here.
"""
from facekd.data.align import (ARCFACE_DST, FaceAligner, arcface_template, center_crop, choose_face,
                               estimate_similarity, transform_points, warp_face)
from facekd.data.align_tree import AlignReport, align_tree, read_align_log
from facekd.data.base import FaceDataset, fit_to_size, load_class_map
from facekd.data.degrade import Degradation, degrade_to_size
from facekd.data.folders import FolderDataset
from facekd.data.image_io import decode_image, encode_image, read_image, write_image
from facekd.data.pairs import (PairSet, agedb_pair_set, bin_pair_set, cfp_pair_set, lfw_pair_set,
                               parse_lfw_pairs, parse_pair_list, position_folds, read_bin, write_bin,
                               write_lfw_pairs)
from facekd.data.recordio import (IRHeader, RecordIODataset, RecordIOReader, RecordIOWriter, pack,
                                  pack_image, unpack, write_recordio)
from facekd.data.sampler import PKBatchSampler
from facekd.data.sources import PAIR_SOURCES, TRAIN_SOURCES, build_pair_set, build_train_dataset
from facekd.data.synthetic import (HELD_OUT_OFFSET, SyntheticFaceGenerator, SyntheticFaces,
                                   synthetic_pair_set, write_synthetic_tree)

__all__ = [
    "ARCFACE_DST", "FaceAligner", "arcface_template", "center_crop", "choose_face", "estimate_similarity",
    "transform_points", "warp_face", "AlignReport", "align_tree", "read_align_log", "FaceDataset",
    "fit_to_size", "load_class_map", "Degradation", "degrade_to_size", "FolderDataset", "decode_image",
    "encode_image", "read_image", "write_image", "PairSet", "agedb_pair_set", "bin_pair_set", "cfp_pair_set",
    "lfw_pair_set", "parse_lfw_pairs", "parse_pair_list", "position_folds", "read_bin", "write_bin",
    "write_lfw_pairs", "IRHeader", "RecordIODataset", "RecordIOReader", "RecordIOWriter", "pack",
    "pack_image", "unpack", "write_recordio", "PKBatchSampler", "PAIR_SOURCES", "TRAIN_SOURCES",
    "build_pair_set", "build_train_dataset", "HELD_OUT_OFFSET", "SyntheticFaceGenerator", "SyntheticFaces",
    "synthetic_pair_set", "write_synthetic_tree",
]
