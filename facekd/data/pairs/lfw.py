"""LFW ``pairs.txt``: header ``N`` (View 1: N same then N different pairs, no folds: they are
reordered into 10 View 2-like folds, each with equal numbers of same and different pairs) or
``F<TAB>P`` (View 2: F folds, each P same then P different lines).  Same pair:
``name<TAB>i<TAB>j``; different pair: ``name1<TAB>i<TAB>name2<TAB>j``; image
``<root>/<name>/<name>_%04d.jpg``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from facekd.data.image_io import read_image
from facekd.data.pairs.pair_set import ImageIndex, PairSet, check_files_exist, content_lines, position_folds
from facekd.errors import DataError


def parse_lfw_pairs(pairs_file) -> Tuple[List[Tuple[str, int, str, int]], np.ndarray, np.ndarray]:
    """Parse an LFW ``pairs*.txt``: returns ``(entries, issame, folds)``.

    ``entries`` are ``(name1, index1, name2, index2)``.  A View 2 file keeps its order and folds;
    a View 1 file (no folds) is reordered into 10 balanced folds by :func:`view1_fold_order`.
    """
    pairs_file = Path(pairs_file)
    lines = content_lines(pairs_file)
    if not lines:
        raise DataError(pairs_file, "empty pairs file")
    (_, header), body = lines[0], lines[1:]
    fields = header.split()
    try:
        if len(fields) == 1:
            num_folds, per_fold = 1, int(fields[0])
        elif len(fields) == 2:
            num_folds, per_fold = int(fields[0]), int(fields[1])
        else:
            raise ValueError
    except ValueError:
        raise DataError(pairs_file, f"line 1: expected a header 'N' or 'folds<TAB>pairs', got {header!r}") from None
    expected = 2 * num_folds * per_fold
    if len(body) != expected:
        raise DataError(pairs_file, f"header {header!r} announces {expected} pairs but the file has {len(body)}")
    entries, issame = [], []
    for number, line in body:
        parts = line.split()
        try:
            if len(parts) == 3:
                entries.append((parts[0], int(parts[1]), parts[0], int(parts[2])))
                issame.append(True)
            elif len(parts) == 4:
                entries.append((parts[0], int(parts[1]), parts[2], int(parts[3])))
                issame.append(False)
            else:
                raise ValueError
        except ValueError:
            raise DataError(pairs_file, f"line {number}: expected 'name i j' or 'name1 i name2 j', got {line!r}") \
                from None
    position = np.arange(expected)
    folds = position // (2 * per_fold) if len(fields) == 2 else np.full(expected, -1)
    block_same = (position % (2 * per_fold)) < per_fold
    issame_arr = np.asarray(issame, dtype=bool)
    if not np.array_equal(issame_arr, block_same):
        first = int(np.argmax(issame_arr != block_same))
        raise DataError(pairs_file, f"line {body[first][0]}: expected a {'same' if block_same[first] else 'different'}"
                                    f" pair ({per_fold} same then {per_fold} different per block)")
    if len(fields) == 1:
        order, folds = view1_fold_order(per_fold)
        entries, issame_arr = [entries[i] for i in order], issame_arr[order]
    return entries, issame_arr, folds.astype(np.int64)


def view1_fold_order(per_class: int, num_folds: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """Reorder a View 1 list (``per_class`` same then ``per_class`` different pairs) into folds.

    View 1 defines no folds, and contiguous ``KFold`` blocks of its file order would hold only
    same or only different pairs, so a fold's threshold would be chosen on a skewed mix.  Like
    View 2, fold ``f`` here is the ``f``-th consecutive block of the same pairs followed by the
    ``f``-th block of the different pairs; the returned ``order`` (indices into the file's
    pairs) lists the folds one after the other, so ``KFold`` without shuffle on the reordered
    pairs gives exactly these folds when the blocks are equal (1,100 / 500 pairs per class).
    Returns ``(order, folds)`` with ``folds`` the fold of each reordered pair.
    """
    class_folds = position_folds(per_class, num_folds)
    order, folds = [], []
    for fold in range(num_folds):
        members = np.flatnonzero(class_folds == fold)
        order.extend([members, members + per_class])
        folds.append(np.full(2 * len(members), fold))
    return np.concatenate(order), np.concatenate(folds)


def _default_lfw_root(pairs_file: Path) -> Path:
    for candidate in ("images", "lfw", "lfw-deepfunneled", "lfw_funneled"):
        if (pairs_file.parent / candidate).is_dir():
            return pairs_file.parent / candidate
    return pairs_file.parent


def lfw_pair_set(path, name: str = "lfw", root=None, ext: str = ".jpg", check_files: bool = True,
                 **options) -> PairSet:
    """LFW pairs from ``path`` (a ``pairs*.txt``, or a folder holding ``pairs.txt``).

    Images are ``root/<name>/<name>_%04d<ext>``; ``root`` defaults to an ``images``/``lfw``
    folder beside the pairs file, else the pairs file's folder.  ``options`` go to :class:`PairSet`.
    """
    path = Path(path)
    pairs_file = path / "pairs.txt" if path.is_dir() else path
    root = Path(root) if root is not None else _default_lfw_root(pairs_file)
    entries, issame, folds = parse_lfw_pairs(pairs_file)
    index = ImageIndex()
    pairs = [[index(str(root / n / f"{n}_{i:04d}{ext}")) for n, i in ((a, i), (b, j))] for a, i, b, j in entries]
    if check_files:
        check_files_exist(index.images, pairs_file)
    return PairSet(name, index.images, np.asarray(pairs), issame, folds, read_image, **options)


def write_lfw_pairs(path, same: Sequence[Tuple[str, int, int]], diff: Sequence[Tuple[str, int, str, int]],
                    num_folds: Optional[int] = None) -> None:
    """Write an LFW pairs file: View 1 (``num_folds=None``: ``N`` header) or View 2 (``F<TAB>P``).

    For View 2, ``same`` and ``diff`` are split into ``num_folds`` equal consecutive blocks.
    """
    if len(same) != len(diff):
        raise ValueError("LFW pair files have as many same as different pairs")
    if num_folds is None:
        lines = [str(len(same))]
        blocks = [(same, diff)]
    else:
        per_fold, rest = divmod(len(same), num_folds)
        if rest:
            raise ValueError(f"{len(same)} pairs do not split into {num_folds} folds")
        lines = [f"{num_folds}\t{per_fold}"]
        blocks = [(same[f * per_fold:(f + 1) * per_fold], diff[f * per_fold:(f + 1) * per_fold])
                  for f in range(num_folds)]
    for block_same, block_diff in blocks:
        lines += ["\t".join(map(str, entry)) for entry in block_same]
        lines += ["\t".join(map(str, entry)) for entry in block_diff]
    Path(path).write_text("\n".join(lines) + "\n")
