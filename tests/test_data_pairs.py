"""Verification pair sets: LFW View 1/2, insightface .bin, AgeDB pair lists, CFP protocol, PairSet."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facekd.data import (PAIR_SOURCES, PairSet, SyntheticFaceGenerator, agedb_pair_set, bin_pair_set,
                         build_pair_set, cfp_pair_set, encode_image, lfw_pair_set, parse_lfw_pairs,
                         position_folds, write_bin, write_image, write_lfw_pairs,
                         write_synthetic_tree)
from facekd.errors import ConfigError, DataError


# ---------------------------------------------------------------------------------- LFW
def test_lfw_view1_real(shared_data):
    root = shared_data / "lfw-view1"
    train = lfw_pair_set(root / "pairsDevTrain.txt", align="center")
    assert len(train) == 2200 and int(train.issame.sum()) == 1100
    # View 1 has no folds: reordered into 10 View 2-like folds of 110 same then 110 different pairs
    assert train.num_folds == 10 and np.bincount(train.folds).tolist() == [220] * 10
    assert (np.diff(train.folds) >= 0).all()
    for fold in range(10):
        block = train.issame[fold * 220:(fold + 1) * 220]
        assert block[:110].all() and not block[110:].any()
    assert train.pairs.shape == (2200, 2) and train.pairs.dtype == np.int64
    assert len(set(train.images)) == len(train.images)
    first = [train.images[i] for i in train.pairs[0]]
    assert first == [str(root / "images" / "Aaron_Peirsol" / f"Aaron_Peirsol_{k:04d}.jpg") for k in (1, 2)]
    different = [train.images[i] for i in train.pairs[110]]
    assert different[0].endswith("AJ_Cook_0001.jpg") and different[1].endswith("Marsha_Thomason_0001.jpg")
    face = train.load(int(train.pairs[0, 0]))
    assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    test = lfw_pair_set(root / "pairsDevTest.txt", align="center")
    assert len(test) == 1000 and int(test.issame.sum()) == 500
    assert np.bincount(test.folds).tolist() == [100] * 10 and test.issame[:50].all() and not test.issame[50:100].any()


def _view2_entries(num_folds=10, per_fold=300):
    rng = np.random.default_rng(0)
    names = [f"Person_{k:03d}" for k in range(400)]
    same = [(names[rng.integers(400)], 1 + k % 5, 6 + k % 3) for k in range(num_folds * per_fold)]
    diff = [(names[k % 400], 1 + k % 4, names[(k * 7 + 1) % 400], 1 + k % 2) for k in range(num_folds * per_fold)]
    return same, diff


def test_lfw_view2_generated_full_list(tmp_path):
    same, diff = _view2_entries()
    write_lfw_pairs(tmp_path / "pairs.txt", same, diff, num_folds=10)
    assert (tmp_path / "pairs.txt").read_text().splitlines()[0] == "10\t300"
    entries, issame, folds = parse_lfw_pairs(tmp_path / "pairs.txt")
    assert len(entries) == 6000 and int(issame.sum()) == 3000
    assert np.bincount(folds).tolist() == [600] * 10
    for fold in range(10):   # each fold: 300 same then 300 different, consecutive
        block = issame[fold * 600:(fold + 1) * 600]
        assert block[:300].all() and not block[300:].any()
        assert (folds[fold * 600:(fold + 1) * 600] == fold).all()
    assert entries[0] == (same[0][0], same[0][1], same[0][0], same[0][2])
    assert entries[300] == diff[0]                        # fold 0's first different pair
    assert entries[600] == (same[300][0], same[300][1], same[300][0], same[300][2])
    pair_set = lfw_pair_set(tmp_path, check_files=False, align="center")   # a folder: uses pairs.txt
    assert len(pair_set) == 6000 and pair_set.num_folds == 10
    assert pair_set.images[pair_set.pairs[300, 1]] == str(tmp_path / diff[0][2] / f"{diff[0][2]}_{diff[0][3]:04d}.jpg")


def test_lfw_pairs_errors_name_the_file(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\nA\t1\t2\nB\t1\t2\nA\t1\tB\t1\n")
    with pytest.raises(DataError, match=r"pairs\.txt: header '2' announces 4 pairs but the file has 3"):
        parse_lfw_pairs(pairs)
    pairs.write_text("1\nA\t1\t2\nA\tx\tB\t1\n")
    with pytest.raises(DataError, match=r"pairs\.txt: line 3"):
        parse_lfw_pairs(pairs)
    pairs.write_text("1\nA\t1\tB\t2\nA\t1\t2\n")
    with pytest.raises(DataError, match="line 2: expected a same pair"):
        parse_lfw_pairs(pairs)
    write_synthetic_tree(tmp_path / "tree", num_identities=4, images_per_identity=2, num_folds=2, pairs_per_fold=1)
    missing = sorted((tmp_path / "tree").rglob("*_0002.jpg"))[0]
    missing.unlink()
    (tmp_path / "tree" / "pairs.txt").write_text(
        f"1\n{missing.parent.name}\t1\t2\n{missing.parent.name}\t1\tsynth_0000003\t1\n")
    with pytest.raises(DataError, match=missing.name) as info:
        lfw_pair_set(tmp_path / "tree" / "pairs.txt", root=tmp_path / "tree")
    assert info.value.path == str(missing)


def test_synthetic_tree_is_an_lfw_view2_set(tmp_path):
    root = write_synthetic_tree(tmp_path, num_identities=12, images_per_identity=3, seed=4, num_folds=2,
                                pairs_per_fold=5, ext=".png")
    pair_set = build_pair_set("synth_tree", "lfw", root, align="none", ext=".png")
    assert pair_set.name == "synth_tree" and len(pair_set) == 20 and pair_set.num_folds == 2
    assert np.bincount(pair_set.folds).tolist() == [10, 10] and int(pair_set.issame.sum()) == 10
    a, b = pair_set.pairs[0]
    assert pair_set.images[a].split("/")[-2] == pair_set.images[b].split("/")[-2]     # same identity
    image = pair_set.load(int(a))
    name, number = pair_set.images[a].split("/")[-1][:-4].rsplit("_", 1)
    np.testing.assert_array_equal(image, SyntheticFaceGenerator(4)(int(name.split("_")[1]), int(number) - 1))


# ---------------------------------------------------------------------------------- .bin
def test_bin_round_trip(tmp_path):
    generator = SyntheticFaceGenerator(2)
    images = [generator(k // 2 if k % 4 < 2 else k, k) for k in range(80)]     # 40 pairs
    issame = [k % 2 == 0 for k in range(40)]
    write_bin(tmp_path / "set.bin", [encode_image(im, ".png") for im in images], issame)
    pair_set = build_pair_set("myset", "bin", tmp_path / "set.bin")
    assert pair_set.name == "myset" and len(pair_set) == 40 and len(pair_set.images) == 80
    np.testing.assert_array_equal(pair_set.pairs, np.arange(80).reshape(40, 2))
    np.testing.assert_array_equal(pair_set.issame, issame)
    assert np.bincount(pair_set.folds).tolist() == [4] * 10 and (np.diff(pair_set.folds) >= 0).all()
    for i in (0, 1, 57):
        np.testing.assert_array_equal(pair_set.load(i), images[i])       # lossless and RGB
    # JPEG-encoded (the default of write_bin), channel order kept: a red image stays red
    red = np.zeros((112, 112, 3), np.uint8)
    red[..., 0] = 220
    write_bin(tmp_path / "red.bin", [red, red], [True])
    loaded = bin_pair_set(tmp_path / "red.bin").load(0)
    assert loaded[..., 0].mean() > 200 and loaded[..., 2].mean() < 20


def test_bin_errors(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"junk\.bin: not an insightface \.bin"):
        bin_pair_set(tmp_path / "junk.bin")
    write_bin(tmp_path / "odd.bin", [np.zeros((112, 112, 3), np.uint8)] * 3, [True])
    with pytest.raises(DataError, match=r"odd\.bin: 3 images for 1 pairs"):
        bin_pair_set(tmp_path / "odd.bin")
    write_bin(tmp_path / "bad.bin", [b"garbage", b"garbage"], [False])
    with pytest.raises(DataError, match=r"bad\.bin#1"):
        bin_pair_set(tmp_path / "bad.bin").load(1)


def test_position_folds_are_kfold_blocks():
    from sklearn.model_selection import KFold

    for count in (6000, 7000, 23):
        expected = np.empty(count, np.int64)
        for fold, (_, test) in enumerate(KFold(10, shuffle=False).split(np.arange(count))):
            expected[test] = fold
        np.testing.assert_array_equal(position_folds(count), expected)


# ---------------------------------------------------------------------------------- AgeDB
def test_agedb_pair_list(tmp_path):
    generator = SyntheticFaceGenerator(3)
    for k in range(8):
        write_image(tmp_path / "imgs" / f"{k}_person_{k % 4}.png", generator(k % 4, k))
    lines = ["# agedb_30 style list: img1 img2 issame"]
    for n in range(60):
        a, b = n % 8, (n + 4) % 8 if n % 2 == 0 else (n + 1) % 8
        same = (a % 4) == (b % 4)
        sep = "," if n % 3 == 0 else " "
        flag = ("1" if same else "0") if n % 2 else ("true" if same else "False")
        lines.append(sep.join([f"imgs/{a}_person_{a % 4}.png", f"imgs/{b}_person_{b % 4}.png", flag]))
    (tmp_path / "agedb_30_pairs.txt").write_text("\n".join(lines) + "\n")
    pair_set = build_pair_set("agedb_30", "agedb", tmp_path / "agedb_30_pairs.txt")
    assert len(pair_set) == 60 and len(pair_set.images) == 8
    assert np.bincount(pair_set.folds).tolist() == [6] * 10
    assert pair_set.issame[0] and not pair_set.issame[1] and int(pair_set.issame.sum()) == 30
    assert pair_set.images[pair_set.pairs[0, 0]] == str(tmp_path / "imgs" / "0_person_0.png")
    np.testing.assert_array_equal(pair_set.load(int(pair_set.pairs[0, 1])), generator(0, 4))

    (tmp_path / "bad.txt").write_text("imgs/0_person_0.png imgs/1_person_1.png maybe\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 1"):
        agedb_pair_set(tmp_path / "bad.txt")
    (tmp_path / "missing.txt").write_text("imgs/0_person_0.png imgs/nope.png 0\n")
    with pytest.raises(DataError, match=r"nope\.png: image listed in .*missing\.txt"):
        agedb_pair_set(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------- CFP
def test_cfp_protocol_real(shared_data):
    fp = build_pair_set("cfp_fp", "cfp_fp", shared_data / "cfp", align="center")
    assert len(fp) == 7000 and int(fp.issame.sum()) == 3500 and fp.num_folds == 10
    assert np.bincount(fp.folds).tolist() == [700] * 10
    block = fp.issame[:700]
    assert block[:350].all() and not block[350:].any()
    # Split/FP/01/same.txt starts with "5,1": frontal #5 and profile #1 of identity 001
    a, b = (fp.images[i] for i in fp.pairs[0])
    assert a.endswith("Data/Images/001/frontal/05.jpg") and b.endswith("Data/Images/001/profile/01.jpg")
    assert fp.load(int(fp.pairs[0, 1])).shape == (112, 112, 3)
    ff = cfp_pair_set(shared_data / "cfp" / "Protocol", protocol="FF", check_files=False)
    assert ff.name == "cfp_ff" and len(ff) == 7000 and ff.num_folds == 10
    assert all("/frontal/" in ff.images[i] for i in ff.pairs.ravel()[:50])


def test_cfp_generated_protocol_and_errors(tmp_path):
    proto = tmp_path / "cfp" / "Protocol"
    images = tmp_path / "cfp" / "Data" / "Images"
    for identity in (1, 2):
        for kind, count in (("frontal", 2), ("profile", 1)):
            for k in range(1, count + 1):
                write_image(images / f"{identity:03d}" / kind / f"{k:02d}.jpg", np.full((80, 60, 3), 50 * identity, np.uint8))
    proto.mkdir(parents=True)
    (proto / "Pair_list_F.txt").write_text("".join(f"{n} ../Data/Images/{(n + 1) // 2:03d}/frontal/{2 - n % 2:02d}.jpg\n"
                                                   for n in range(1, 5)))
    (proto / "Pair_list_P.txt").write_text("1 ../Data/Images/001/profile/01.jpg\n2 ../Data/Images/002/profile/01.jpg\n")
    for protocol, same, diff in (("FP", "1,1\n4,2\n", "1,2\n3,1\n"), ("FF", "1,2\n", "2,3\n")):
        for fold in ("01", "02"):
            (proto / "Split" / protocol / fold).mkdir(parents=True)
            (proto / "Split" / protocol / fold / "same.txt").write_text(same)
            (proto / "Split" / protocol / fold / "diff.txt").write_text(diff)
    fp = cfp_pair_set(tmp_path / "cfp", "FP", align="resize")
    assert len(fp) == 8 and fp.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert fp.issame.tolist() == [True, True, False, False] * 2
    assert len(fp.images) == 5 and fp.images[fp.pairs[1, 0]].endswith("002/frontal/02.jpg")
    assert fp.load(int(fp.pairs[1, 1]))[0, 0].tolist() == [100, 100, 100]
    ff = cfp_pair_set(proto, "FF")
    assert len(ff) == 4 and ff.images[ff.pairs[1, 1]].endswith("002/frontal/01.jpg")
    aligned = tmp_path / "aligned"                      # faces aligned beforehand, same layout
    for key in fp.images:
        relative = Path(key).relative_to(images)
        write_image(aligned / relative, np.full((112, 112, 3), 7, np.uint8))
    pre = cfp_pair_set(tmp_path / "cfp", "FP", root=aligned, align="none")
    assert pre.images == [str(aligned / Path(k).relative_to(images)) for k in fp.images]
    assert pre.pairs.tolist() == fp.pairs.tolist() and pre.load(0)[0, 0].tolist() == [7, 7, 7]

    (proto / "Split" / "FP" / "02" / "diff.txt").write_text("1,2\n9,1\n")
    with pytest.raises(DataError, match=r"FP/02/diff\.txt: line 2"):
        cfp_pair_set(tmp_path / "cfp", "FP")
    (images / "001" / "profile" / "01.jpg").unlink()
    (proto / "Split" / "FP" / "02" / "diff.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"profile/01\.jpg: image listed in"):
        cfp_pair_set(tmp_path / "cfp", "FP")


# ---------------------------------------------------------------------------------- PairSet
def _rect_pair_set(align, **kw):
    image = np.zeros((200, 160, 3), np.uint8)
    image[60:140, 40:120] = 255
    reader = lambda key: image if key != "blank" else np.full((150, 150, 3), 77, np.uint8)  # noqa: E731
    return PairSet("t", ["face", "blank"], np.array([[0, 1]]), np.array([False]), np.array([-1]), reader,
                   align=align, **kw)


def test_pair_set_align_modes_and_cache():
    with pytest.raises(DataError, match="face: expected an aligned 112x112 face, got 160x200"):
        _rect_pair_set("none").load(0)
    resized = _rect_pair_set("resize").load(0)
    assert resized.shape == (112, 112, 3)
    centred = _rect_pair_set("center", center_fraction=0.5, center_y_shift=0.0).load(0)
    assert centred.shape == (112, 112, 3) and centred.min() == 255      # the central 80x80 is white
    cached = _rect_pair_set("center", cache=True)
    assert cached.load(0) is cached.load(0)
    assert _rect_pair_set("center").load(0) is not _rect_pair_set("center").load(0)
    mtcnn = _rect_pair_set("mtcnn")
    blank = mtcnn.load(1)                                                   # no face: centre-crop fallback
    assert blank.shape == (112, 112, 3) and mtcnn.no_face == ["blank"] and int(blank[56, 56, 0]) == 77
    with pytest.raises(ValueError, match="align must be one of"):
        _rect_pair_set("magic")


def test_registry_and_errors():
    assert sorted(PAIR_SOURCES) == ["agedb", "bin", "cfp_ff", "cfp_fp", "lfw", "synthetic"]
    with pytest.raises(ConfigError, match="unknown pair source 'nope'"):
        build_pair_set("x", "nope", "/tmp")
    with pytest.raises(ConfigError, match="needs a path"):
        build_pair_set("x", "lfw")
    with pytest.raises(TypeError, match="unexpected keyword argument .colour"):
        build_pair_set("x", "synthetic", num_pairs=20, colour="red")
    pair_set = build_pair_set("val", "synthetic", num_pairs=20, num_folds=2)
    assert pair_set.name == "val" and len(pair_set) == 20 and pair_set.num_folds == 2
