"""dlib's face ResNet: the torch port (facekd.models.dlib_resnet) against dlib-bin, in one run (issue 19).

    python3 bench/bench_dlib.py                       # 2 threads, batch 1 and 64, CUDA too when present
    python3 bench/bench_dlib.py --runs 5 --out bench_dlib.json

Times, on ``--threads`` CPU threads, one call at each batch size of

* ``torch-Nt``: :class:`facekd.models.dlib_resnet.DlibFaceResNet` (float32, eager) on N of
  ``--torch-threads`` (``torch.set_num_threads``; default ``--threads`` and 1: on a machine
  that other jobs load, torch's spinning OpenMP threads can lose most of their time to
  each other — ``OMP_WAIT_POLICY=PASSIVE`` helps, and the report records it);
* ``dlib-bin``: ``compute_face_descriptor`` in this process (one core: dlib-bin computes on one
  thread and holds the GIL), and at batch sizes of at least ``threads * 8`` also split over
  ``threads`` worker processes, as :class:`facekd.teachers.DlibTeacher` does;
* ``torch-cuda`` when a GPU is present.

Each configuration: ``--warmup`` untimed calls, then ``--runs`` timed ones (stopping after
``--max-seconds`` once it has 2); the median (``--statistic min``: the fastest, for a busy
machine).  Prints images/s and the ratios torch / dlib-bin measured in this same run, which
survive a busy machine better than the absolute numbers, and the issue's target (torch on
``--threads`` threads >= 3x dlib-bin's best throughput on as many cores, batch 64) as PASS/MISS.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekd.argtypes import OneLineParser, non_negative_int, number_list, positive_float, positive_int  # noqa: E402
from facekd.models.dlib_resnet import DlibFaceResNet  # noqa: E402
from facekd.teachers.dlib_teacher import DLIB_FRAMING, DlibTeacher, default_model_path  # noqa: E402

DEFAULT_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-extra"
TARGET_RATIO = 3.0


def load_chips(folder: Path, count: int) -> np.ndarray:
    """``count`` 150 px dlib chips framed from aligned faces in ``folder`` (synthetic faces if absent)."""
    if folder.is_dir():
        from facekd.data import read_image

        files = sorted(folder.glob("*/*.jpg"))[:count]
        faces = np.stack([read_image(f) for f in files])
    else:
        from facekd.data.synthetic import SyntheticFaces

        synthetic = SyntheticFaces(num_identities=count, images_per_identity=1)
        faces = np.stack([synthetic.load(i) for i in range(count)])
    reps = -(-count // len(faces))
    return DLIB_FRAMING.frame(np.concatenate([faces] * reps)[:count])


def time_calls(call: Callable[[], object], warmup: int, runs: int, max_seconds: float, statistic: str) -> Dict:
    """Seconds per call (median or min of the timed calls) and how many were timed."""
    for _ in range(warmup):
        call()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < runs and (len(times) < 2 or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    value = min(times) if statistic == "min" else statistics.median(times)
    return {"seconds": value, "runs": len(times)}


def torch_call(network: DlibFaceResNet, chips: np.ndarray, device: torch.device,
               threads: int = 0) -> Callable[[], object]:
    batch = torch.from_numpy(chips).permute(0, 3, 1, 2).contiguous().to(device)

    def call() -> object:
        if threads:
            torch.set_num_threads(threads)
        with torch.no_grad():
            out = network(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out
    return call


def run(args: argparse.Namespace) -> Dict:
    """All configurations and the same-run ratios."""
    load_at_start = os.getloadavg()
    path = default_model_path()
    sizes = args.batch_sizes
    chips = load_chips(Path(args.faces), max(sizes))
    network = DlibFaceResNet.from_file(path)
    in_process = DlibTeacher(path, threads=1)
    workers = DlibTeacher(path, threads=args.threads)
    configs: Dict[str, Callable[[np.ndarray], Callable[[], object]]] = {
        f"torch-{t}t": (lambda c, t=t: torch_call(network, c, torch.device("cpu"), t))
        for t in args.torch_threads}
    configs.update({
        "dlib-bin": lambda c: (lambda: in_process.embed_frames(c)),
        f"dlib-bin-{args.threads}proc": lambda c: (lambda: workers.embed_frames(c)),
    })
    if torch.cuda.is_available():
        gpu = DlibFaceResNet.from_file(path).cuda()
        configs["torch-cuda"] = lambda c: torch_call(gpu, c, torch.device("cuda"), args.threads)
    results: Dict[str, Dict] = {}
    try:
        for size in sizes:
            for name, make in configs.items():
                if name.endswith("proc") and size < args.threads * 8:
                    continue                  # DlibTeacher keeps small batches in-process
                timing = time_calls(make(chips[:size]), args.warmup, args.runs, args.max_seconds, args.statistic)
                timing["images_per_s"] = size / timing["seconds"]
                results[f"{name}@{size}"] = timing
                print(f"{name:>16} batch {size:3d}: {timing['images_per_s']:8.1f} img/s "
                      f"({timing['seconds'] * 1000:.1f} ms/batch, {timing['runs']} runs)", flush=True)
    finally:
        workers.close()
    ratios = {}
    for key, value in results.items():
        name, size = key.split("@")
        if name.startswith("torch"):
            for ref in ("dlib-bin", f"dlib-bin-{args.threads}proc"):
                if f"{ref}@{size}" in results:
                    ratios[f"{key} / {ref}@{size}"] = value["images_per_s"] / results[f"{ref}@{size}"]["images_per_s"]
    best = max((results[k]["images_per_s"] for k in (f"dlib-bin@64", f"dlib-bin-{args.threads}proc@64")
                if k in results), default=None)
    target = None
    own = f"torch-{args.threads}t@64"
    if best and own in results:
        ratio = results[own]["images_per_s"] / best
        target = {f"{own} / best dlib-bin@64": ratio, "pass": ratio >= TARGET_RATIO}
    return {"threads": args.threads, "statistic": args.statistic, "torch": torch.__version__,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
            "results": results, "ratios": ratios, "target": target}


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--torch-threads", type=number_list(int, ge=1),
                        help="torch thread counts to time (default: --threads,1)")
    parser.add_argument("--batch-sizes", type=number_list(int, ge=1), default="1,64")
    parser.add_argument("--runs", type=positive_int, default=5)
    parser.add_argument("--warmup", type=non_negative_int, default=1)
    parser.add_argument("--max-seconds", type=positive_float, default=20.0)
    parser.add_argument("--statistic", choices=("median", "min"), default="median")
    parser.add_argument("--faces", default=str(DEFAULT_FACES), help="aligned 112 px faces (default: celeba-extra)")
    parser.add_argument("--out", help="write the report as JSON")
    args = parser.parse_args(argv)
    args.torch_threads = args.torch_threads or [args.threads, 1]
    report = run(args)
    for key, value in report["ratios"].items():
        print(f"ratio {key}: {value:.2f}x")
    if report["target"]:
        t = report["target"]
        key = next(k for k in t if k != "pass")
        print(f"target {key} >= {TARGET_RATIO}x: {t[key]:.2f}x {'PASS' if t['pass'] else 'MISS'}")
    print(f"load average {report['load_average_at_start']} -> {report['load_average_at_end']} "
          f"(OMP_WAIT_POLICY={report['OMP_WAIT_POLICY']})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
