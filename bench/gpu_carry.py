"""Pack aligned training faces as WebP into one .tgz that fits a device run's carry (issue 34's GPU path).

A lent GPU machine cannot read ../shared or runs/ here: what it trains on travels with the working
tree, under 64 MiB in all.  This writes every face of the labelled tree (identity folders) and then
faces of the unlabelled folders, taken in turn from each, re-encoded as WebP, until ``--budget-mb``
is reached; the archive keeps the folder layout (``labelled/<identity>/...``,
``unlabelled/<source>/...``) that ``configs/experiments/long_sface/student_gpu.yaml`` reads after
``tar -xzf``.  112 px aligned faces at quality 85 take ~3.4 kB each (13.6 k faces: 46 MB).

    python3 bench/gpu_carry.py --labelled runs/cpu_scale_dlib/train \\
        --unlabelled runs/unlabelled/leak_filter/run/faces/all_age_faces ../shared/data/celeba-extra \\
        --out runs/gpu_carry/faces.tgz --budget-mb 46
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import tarfile
from pathlib import Path
from typing import Iterator, List, Tuple

import cv2

from facekd.data.image_io import IMAGE_EXTENSIONS, read_image


def faces_under(root: Path) -> List[Path]:
    """Image files below ``root`` (linked folders followed, as the training tree links identities), sorted."""
    return sorted(Path(folder) / name for folder, _, names in os.walk(root, followlinks=True)
                  for name in names if Path(name).suffix.lower() in IMAGE_EXTENSIONS)


def interleaved(sources: List[Tuple[str, List[Path]]]) -> Iterator[Tuple[str, Path]]:
    """One face of each source in turn, until all are used up."""
    for group in itertools.zip_longest(*[[(name, p) for p in paths] for name, paths in sources]):
        yield from (entry for entry in group if entry is not None)


def webp(path: Path, quality: int) -> bytes:
    image = read_image(path)                               # RGB uint8; a bad file raises naming itself
    ok, encoded = cv2.imencode(".webp", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"{path}: WebP encoding failed")
    return encoded.tobytes()


def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", type=Path, required=True, help="identity-folder tree of aligned faces")
    parser.add_argument("--unlabelled", type=Path, nargs="*", default=[], help="folders of aligned faces")
    parser.add_argument("--out", type=Path, required=True, help="the .tgz to write")
    parser.add_argument("--budget-mb", type=float, default=46.0, help="largest archive size (MiB): 64 less the working tree (~15 MiB)")
    parser.add_argument("--quality", type=int, default=85, help="WebP quality")
    args = parser.parse_args(argv)
    budget = int(args.budget_mb * 2 ** 20)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"labelled": 0}
    written = 0
    with tarfile.open(args.out, "w:gz", compresslevel=1) as archive:   # WebP does not compress further
        for path in faces_under(args.labelled):
            data = webp(path, args.quality)
            add(archive, f"labelled/{path.relative_to(args.labelled).with_suffix('.webp')}", data)
            counts["labelled"] += 1
            written += len(data) + 512
        if written > budget:
            print(f"gpu_carry: the labelled faces alone take {written / 2 ** 20:.1f} MiB > {args.budget_mb} MiB",
                  file=sys.stderr)
            return 1
        sources = [(root.name, faces_under(root)) for root in args.unlabelled]
        for name, path in interleaved(sources):
            data = webp(path, args.quality)
            if written + len(data) + 512 > budget:
                break
            add(archive, f"unlabelled/{name}/{path.name}".rsplit(".", 1)[0] + ".webp", data)
            counts[name] = counts.get(name, 0) + 1
            written += len(data) + 512
    size = args.out.stat().st_size / 2 ** 20
    print(f"gpu_carry: {args.out} {size:.1f} MiB: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
