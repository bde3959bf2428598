"""insightface RecordIO without mxnet: format details, round trips, truncation."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from facekd.data import (IRHeader, RecordIODataset, RecordIOReader, RecordIOWriter, SyntheticFaceGenerator,
                         build_train_dataset, encode_image, pack, unpack, write_recordio)
from facekd.data.recordio import MAGIC
from facekd.errors import DataError


@pytest.fixture(scope="module")
def faces():
    generator = SyntheticFaceGenerator(1)
    # 3 identities with 3, 2, 4 images; (label, image) in a shuffled order
    samples = [(identity, generator(identity, k)) for identity, n in ((7, 3), (2, 2), (5, 4)) for k in range(n)]
    order = np.random.default_rng(0).permutation(len(samples))
    return [samples[i] for i in order]


def test_pack_unpack_scalar_and_array_labels():
    header, body = unpack(pack(IRHeader(0, 3.0, 11, 12), b"jpegbytes"))
    assert header.flag == 0 and header.label == 3.0 and (header.id, header.id2) == (11, 12) and body == b"jpegbytes"
    header, body = unpack(pack(IRHeader(0, [4.0, 0.5, -1.0], 1, 0), b"xyz"))
    assert header.flag == 3 and body == b"xyz"
    np.testing.assert_array_equal(header.label, np.array([4.0, 0.5, -1.0], np.float32))
    raw = pack(IRHeader(0, 2.0, 0, 0), b"")
    assert len(raw) == 24 and struct.unpack("<IfQQ", raw) == (0, 2.0, 0, 0)


def test_record_framing_matches_dmlc_format(tmp_path):
    """magic, lrecord (cflag << 29 | length), payload, zero padding to 4 bytes; idx = key<TAB>offset."""
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
        writer.write(b"abcde", key=10)
        writer.write(b"xy", key=20)
    data = (tmp_path / "a.rec").read_bytes()
    assert data[:8] == struct.pack("<II", MAGIC, 5) and data[8:13] == b"abcde" and data[13:16] == b"\0\0\0"
    assert data[16:24] == struct.pack("<II", MAGIC, 2) and data[24:26] == b"xy" and len(data) == 28
    assert (tmp_path / "a.idx").read_text() == "10\t0\n20\t16\n"
    reader = RecordIOReader(tmp_path / "a.rec", tmp_path / "a.idx")
    assert reader.keys == [10, 20] and reader.read(10) == b"abcde" and reader.read(20) == b"xy"


def test_payload_containing_the_magic_word_is_split_and_restored(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payload = b"head" + magic + b"middle!!" + magic + b"tail-odd"     # magic at aligned offsets 4 and 16
    unaligned = b"x" + magic + b"yz"                                     # not aligned: not split
    with RecordIOWriter(tmp_path / "m.rec") as writer:
        writer.write(payload)
        writer.write(unaligned)
    data = (tmp_path / "m.rec").read_bytes()
    flags = [struct.unpack_from("<I", data, 4)[0] >> 29]
    assert flags == [1]                                   # first part of a multi-part record
    reader = RecordIOReader(tmp_path / "m.rec")          # no .idx: keys from a scan
    assert reader.keys == [0, 1]
    assert reader.read(0) == payload and reader.read(1) == unaligned


@pytest.mark.parametrize("header_record", [True, False])
@pytest.mark.parametrize("array_labels", [False, True])
def test_dataset_round_trip(tmp_path, faces, header_record, array_labels):
    # PNG bytes (lossless) so that decoded images can be compared exactly
    samples = [([float(label), 0.25] if array_labels else label, encode_image(image, ".png")) for label, image in faces]
    rec, idx = write_recordio(tmp_path / "ds", samples, header_record=header_record)
    dataset = RecordIODataset(tmp_path / "ds")
    assert dataset.has_header_record is header_record
    assert len(dataset) == 9 and dataset.num_classes == 3
    assert dataset.classes == (["0", "1", "2"] if header_record else ["2", "5", "7"])
    assert sorted(np.bincount(dataset.labels).tolist()) == [2, 3, 4]
    assert dataset.labels.dtype == np.int64
    # every sample decodes to exactly one original image of its identity
    originals = {}
    for label, image in faces:
        originals.setdefault(label, []).append(image)
    by_count = {len(v): k for k, v in originals.items()}
    for i in range(len(dataset)):
        image = dataset.load(i)
        assert image.shape == (112, 112, 3) and image.dtype == np.uint8
        label = by_count[int(np.sum(dataset.labels == dataset.labels[i]))]
        assert sum(np.array_equal(image, o) for o in originals[label]) == 1
    item = dataset[4]
    assert tuple(item["image"].shape) == (3, 112, 112) and item["label"] == int(dataset.labels[4])
    # limits keep the first identities / images
    limited = RecordIODataset(rec, num_identities=2, images_per_identity=1)
    assert len(limited) == 2 and limited.num_classes == 2


def test_header_record_layout(tmp_path, faces):
    write_recordio(tmp_path, faces)
    reader = RecordIOReader(tmp_path / "train.rec", tmp_path / "train.idx")
    header, body = unpack(reader.read(0))
    assert header.flag == 2 and body == b"" and list(header.label) == [10.0, 13.0]   # 9 images + 1, 3 ids
    assert reader.keys == list(range(13))
    ranges = [tuple(unpack(reader.read(k))[0].label) for k in (10, 11, 12)]
    assert ranges == [(1.0, 3.0), (3.0, 7.0), (7.0, 10.0)]   # identities 2, 5, 7 with 2, 4, 3 images


def test_truncated_rec_raises_naming_the_file(tmp_path, faces):
    rec, _ = write_recordio(tmp_path, faces[:4], header_record=False)
    data = rec.read_bytes()
    rec.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"train\.rec: truncated"):
        RecordIODataset(tmp_path)
    # skip_bad_images drops the incomplete tail record instead
    dataset = RecordIODataset(tmp_path, skip_bad_images=True)
    assert len(dataset) == 3 and dataset.reader.dropped_keys == [3]
    assert dataset.load(2).shape == (112, 112, 3)
    rec.write_bytes(b"\x01\x02\x03\x04" + data[4:])
    with pytest.raises(DataError, match="bad magic"):
        RecordIOReader(rec).read(0)


def test_corrupt_image_record_and_skip_bad_images(tmp_path, faces):
    samples = [(0, faces[0][1]), (0, b"not a jpeg"), (0, faces[1][1]), (1, faces[2][1])]
    write_recordio(tmp_path, samples, header_record=False)
    strict = RecordIODataset(tmp_path)
    with pytest.raises(DataError, match=r"train\.rec#1"):
        strict.load(1)
    lenient = RecordIODataset(tmp_path, skip_bad_images=True)
    item = lenient[1]
    assert item["index"] == 2 and item["label"] == 0            # the next image of the same identity
    assert list(lenient.bad_images) == [1]


def test_fingerprint_and_build_train_dataset(tmp_path, faces):
    from types import SimpleNamespace

    write_recordio(tmp_path / "a", faces)
    cfg = SimpleNamespace(source="recordio", root=str(tmp_path / "a"), num_identities=1, images_per_identity=1,
                          seed=0, skip_bad_images=False, input_size=112)
    dataset = build_train_dataset(cfg)
    assert len(dataset) == 9          # num_identities/images_per_identity only shape synthetic data
    same = build_train_dataset(cfg)
    assert dataset.fingerprint() == same.fingerprint()
    write_recordio(tmp_path / "b", faces[:-1])
    other = build_train_dataset(SimpleNamespace(source="recordio", root=str(tmp_path / "b")))
    assert other.fingerprint() != dataset.fingerprint()
    capped = build_train_dataset(SimpleNamespace(source="recordio", root=str(tmp_path / "a"), max_identities=2))
    assert capped.num_classes == 2 and len(capped) == 6   # identities 2 and 5: 2 + 4 images
