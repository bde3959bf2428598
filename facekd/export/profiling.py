"""Where an exported model spends its time, per layer type, against the machine's roofline.

:func:`profile_layer_types` runs a model with onnxruntime's profiler (``enable_profiling``)
and adds up the kernel time of every node by *layer type*:

``depthwise``   grouped convolutions with one channel per group (3x3 depthwise, GDConv)
``pointwise``   1x1 convolutions on a spatial map (expand / project / conv2)
``dense``       full convolutions (the first 3x3) and linear layers (1x1 conv on a 1x1 map, Gemm)
``prelu``       the ops of a PReLU (``PRelu`` itself or the :mod:`facekd.export.prelu` rewrite)
``elementwise`` residual ``Add`` and other element-wise ops
``other``       quantise/dequantise, layout reorders, transposes, flatten

For each type it reports the achieved GFLOP/s (``2 x MACs``) and GB/s -- the *minimum*
memory traffic: input and output activations once plus the weights, at the element size
the kernel uses (4 bytes fp32, 1 byte int8) -- and the arithmetic intensity (FLOP/byte).
With the machine's peak FLOP/s and memory bandwidth (:func:`measure_memory_bandwidth`)
the attainable speed is ``min(peak, intensity x bandwidth)`` (the roofline), so the gap of
each layer type to the physical limit is visible.

Node names in the profile are mapped back to the graph (ORT names fused nodes after the
original node or its output tensor), and FLOPs and sizes come from the graph's inferred shapes.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from facekd.export.protos import load_onnx_proto
from facekd.export.prelu import PRELU_REWRITES
from facekd.fileio import PathLike

LAYER_TYPES = ("depthwise", "pointwise", "dense", "prelu", "elementwise", "other")
#: op types belonging to a PReLU rewrite are recognised by the rewrite's node-name marker
#: (:func:`facekd.export.prelu.rewrite_prelu` names each rewrite's nodes ``<PRelu>_<i>/<rewrite>/...``)
PRELU_MARKERS = tuple(f"/{name}/" for name in PRELU_REWRITES)
_SUFFIXES = re.compile(r"(_nchwc|_token_\d+|_quant|_fused|_kernel_time)+$")


@dataclass
class NodeCost:
    """Per-image work of one graph node."""
    layer_type: str
    flops: float          # per image
    elements: float       # activations read + written per image (elements)
    weights: float        # weight elements (read once per batch)


@dataclass
class LayerTypeStat:
    """Time and throughput of one layer type in one profiled run."""
    layer_type: str
    nodes: int
    ms: float                    # kernel time per batch (sum of each node's fastest call)
    share: float                 # of the total kernel time
    gflops: float                # achieved GFLOP/s
    gbps: float                  # achieved GB/s (minimum traffic)
    intensity: float             # FLOP per byte
    roofline_gflops: Optional[float] = None   # min(peak, intensity x bandwidth)
    pct_roofline: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _shape_of(value_info) -> List[Any]:
    return [d.dim_value if d.HasField("dim_value") else 1 for d in value_info.type.tensor_type.shape.dim]


def node_costs(model_path: PathLike) -> Dict[str, NodeCost]:
    """:class:`NodeCost` of every node, keyed by node name *and* by each output tensor name.

    Uses ONNX shape inference with the batch dimension set to 1 (costs are per image).
    """
    import onnx

    proto = load_onnx_proto(model_path)
    proto = onnx.shape_inference.infer_shapes(proto)
    graph = proto.graph
    shapes = {vi.name: _shape_of(vi) for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    weights = {init.name: list(init.dims) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    costs: Dict[str, NodeCost] = {}
    for node in graph.node:
        cost = _cost(node, shapes, weights, producers)
        for key in (node.name, *node.output):
            if key:
                costs[key] = cost
    return costs


def _elements(shape: Optional[List[int]]) -> float:
    return float(np.prod(shape)) if shape else 0.0


def _cost(node, shapes, weights, producers) -> NodeCost:
    name = node.name or ""
    if any(marker in name for marker in PRELU_MARKERS) or node.op_type == "PRelu":
        layer_type = "prelu"
    elif node.op_type in ("Conv", "Gemm", "MatMul"):
        layer_type = None
    elif node.op_type in ("Add", "Sub", "Mul", "Relu", "Max", "Neg", "Clip"):
        layer_type = "elementwise"
    else:
        layer_type = "other"
    y = shapes.get(node.output[0]) if node.output else None
    flops, weight_count = 0.0, 0.0
    if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
        w = weights[node.input[1]]                       # [Cout, Cin/group, kh, kw]
        weight_count = _elements(w)
        flops = 2.0 * _elements(y) * float(np.prod(w[1:]))
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if layer_type is None:
            spatial = y[2:] if y else []
            if group > 1 and w[1] == 1:
                layer_type = "depthwise"
            elif w[2:] == [1, 1] and _elements(spatial) > 1:
                layer_type = "pointwise"
            else:
                layer_type = "dense"
    elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1:
        w = weights.get(node.input[1]) or shapes.get(node.input[1]) or []
        weight_count = _elements(w)
        flops = 2.0 * _elements(y) * float(w[0] if node.op_type == "MatMul" or not w else w[-1])
        layer_type = layer_type or "dense"
    elif node.op_type in ("Add", "Sub", "Mul", "PRelu", "Max"):
        flops = _elements(y)
    elements = sum(_elements(shapes.get(i)) for i in node.input if i and i not in weights) + _elements(y)
    return NodeCost(layer_type or "other", flops, elements, weight_count)


def _lookup(event_name: str, costs: Dict[str, NodeCost]) -> Optional[NodeCost]:
    name = _SUFFIXES.sub("", event_name)
    if name in costs:
        return costs[name]
    for suffix in ("_output_0",):
        if name + suffix in costs:
            return costs[name + suffix]
    return None


def run_profile(model_path: PathLike, feed: np.ndarray, runs: int = 3, threads: Optional[int] = None,
                options: Any = None) -> List[Dict[str, Any]]:
    """onnxruntime's per-node kernel events of ``runs`` calls of the model on ``feed`` (after one warm-up)."""
    import onnxruntime as ort

    from facekd.export.runtime import session_options

    options = options or session_options(threads)
    with tempfile.TemporaryDirectory(prefix="facekd-profile-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(os.fspath(model_path), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):
            session.run(None, {name: feed})
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return kernels[len(kernels) // (runs + 1):]      # every call runs the same kernels: drop the warm-up


def fastest_per_node(events: List[Dict[str, Any]]) -> Dict[str, float]:
    """``{node event name: microseconds}``, the fastest of each node's calls.

    On a shared machine a kernel is slowed whenever another process takes its core; the
    fastest of a few calls is the estimate least affected by that (as the best-of-N matmul peak).
    """
    fastest: Dict[str, float] = {}
    for event in events:
        fastest[event["name"]] = min(fastest.get(event["name"], float("inf")), float(event["dur"]))
    return fastest


def profile_layer_types(model_path: PathLike, feed: np.ndarray, runs: int = 3, threads: Optional[int] = None,
                        element_bytes: int = 4, peak_gflops: Optional[float] = None,
                        bandwidth_gbps: Optional[float] = None, cost_model: Optional[PathLike] = None,
                        options: Any = None) -> List[LayerTypeStat]:
    """Kernel time, GFLOP/s, GB/s and roofline share per layer type (see the module docstring).

    Args:
        model_path: the ONNX file to profile.
        feed: one input batch in the model's input format.
        runs: profiled calls (after one warm-up call); each node counts with its fastest call.
        threads: onnxruntime intra-op threads.
        element_bytes: bytes per activation/weight element (4 for fp32, 1 for int8 models).
        peak_gflops, bandwidth_gbps: the machine's limits, for the roofline columns.
        cost_model: the graph whose node names and shapes give the FLOPs (default: ``model_path``;
            for an int8 model pass the fp32 graph it was quantised from -- ORT's fused int8 nodes
            keep the fp32 node names).
        options: onnxruntime ``SessionOptions`` (default: :func:`facekd.export.runtime.session_options`).
    """
    costs = node_costs(cost_model or model_path)
    batch = len(feed)
    totals = {t: {"us": 0.0, "flops": 0.0, "bytes": 0.0, "nodes": set()} for t in LAYER_TYPES}
    for name, micros in fastest_per_node(run_profile(model_path, feed, runs, threads, options)).items():
        cost = _lookup(name, costs)
        layer_type = cost.layer_type if cost else ("prelu" if any(m in name for m in PRELU_MARKERS) else "other")
        entry = totals[layer_type]
        entry["us"] += micros
        entry["nodes"].add(name)
        if cost:
            entry["flops"] += cost.flops * batch
            entry["bytes"] += (cost.elements * batch + cost.weights) * element_bytes
    total_us = sum(entry["us"] for entry in totals.values()) or 1.0
    stats = []
    for layer_type, entry in totals.items():
        if not entry["nodes"]:
            continue
        seconds = entry["us"] / 1e6
        gflops = entry["flops"] / 1e9 / (entry["us"] / 1e6) if entry["us"] else 0.0
        gbps = entry["bytes"] / 1e9 / (entry["us"] / 1e6) if entry["us"] else 0.0
        intensity = entry["flops"] / entry["bytes"] if entry["bytes"] else 0.0
        stat = LayerTypeStat(layer_type, len(entry["nodes"]), seconds * 1e3, entry["us"] / total_us,
                             gflops, gbps, intensity)
        if peak_gflops and bandwidth_gbps and entry["flops"]:
            stat.roofline_gflops = min(peak_gflops, intensity * bandwidth_gbps)
            stat.pct_roofline = 100.0 * gflops / stat.roofline_gflops
        stats.append(stat)
    return stats


def measure_memory_bandwidth(megabytes: int = 128, repeats: int = 5) -> float:
    """The machine's sustained memory bandwidth in GB/s: the fastest of ``repeats`` large copies.

    A ``torch`` copy of ``megabytes`` (larger than the last-level cache) on the current
    ``torch.get_num_threads()`` threads; read + write bytes are counted.
    """
    import torch

    source = torch.ones(megabytes * 2 ** 20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def add_roofline(stat: Dict[str, Any], peak_gflops: float, bandwidth_gbps: float) -> None:
    """Set a layer-type stat's ``roofline_gflops`` = min(peak, intensity x bandwidth) and ``pct_roofline``."""
    if stat["gflops"] and stat["intensity"]:
        stat["roofline_gflops"] = min(peak_gflops, stat["intensity"] * bandwidth_gbps)
        stat["pct_roofline"] = 100.0 * stat["gflops"] / stat["roofline_gflops"]
