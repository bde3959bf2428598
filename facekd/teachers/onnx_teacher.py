"""``teacher.kind: onnx`` — any ONNX face embedder run by onnxruntime.

insightface's model packs (``buffalo_l``'s ``w600k_r50.onnx``, ``antelopev2``'s
``glintr100.onnx``) take 112x112 RGB arcface crops scaled ``(x - 127.5) / 127.5``: the
default framing.  Other embedders declare theirs in ``teacher.framing`` (``input_size``,
``template``, ``channel_order``, ``mean``, ``std``).  The input may be float or uint8
(raw pixels, as facekd's ``--input-format uint8`` exports), NCHW or NHWC; a square input
size fixed in the graph is taken from it.  The CUDA provider is used when onnxruntime has it
and the teacher's device is a GPU.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from facekd.errors import DataError
from facekd.teachers.base import TEACHERS, Teacher, existing_file, file_digest
from facekd.teachers.framing import Framing, framing_from_config


def providers_for(device: torch.device) -> list:
    """onnxruntime providers: CUDA first when the device is a GPU and onnxruntime has it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxTeacher(Teacher):
    """An ONNX embedder with one image input ``[N, 3, S, S]`` / ``[N, S, S, 3]`` and an ``[N, D]`` output.

    Args:
        path: the ``.onnx`` file.
        framing: the embedder's view of a face; its ``input_size`` is replaced by the
            graph's when the graph fixes one.
        device: ``cuda`` selects onnxruntime's CUDA provider when available.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    kind = "onnx"

    def __init__(self, path: str, framing: Framing = Framing(), device: Any = "cpu",
                 threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        from facekd.export.runtime import load_onnx_proto, session_options

        load_onnx_proto(path, load_weights=False)          # a clear error for a file that is not ONNX
        try:
            self.session = ort.InferenceSession(path, sess_options=session_options(threads),
                                                providers=providers_for(torch.device(device)))
        except Exception as error:  # onnxruntime's own exception types
            raise DataError(path, f"onnxruntime cannot load the model ({error})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise DataError(path, f"a face embedder has one input; this model has {[i.name for i in inputs]}")
        self.input = inputs[0]
        shape = list(self.input.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise DataError(path, f"not a face embedder: expected an image input [N, 3, S, S] or [N, S, S, 3], "
                                  f"got {self.input.name} {shape}")
        self.layout = "NCHW" if shape[1] == 3 else "NHWC"
        spatial = shape[2] if self.layout == "NCHW" else shape[1]
        if isinstance(spatial, int) and spatial != framing.input_size:
            framing = Framing(spatial, framing.template, framing.channel_order, framing.mean, framing.std)
        if self.input.type not in ("tensor(float)", "tensor(uint8)"):
            raise DataError(path, f"unsupported input type {self.input.type} (expected float32 or uint8)")
        self.raw_pixels = self.input.type == "tensor(uint8)"
        self.output_name = outputs[0].name
        super().__init__(framing, 0, path, torch.device(device))
        probe = self.embed_frames(np.zeros((1, framing.input_size, framing.input_size, 3), np.uint8))
        if probe.dim() != 2 or len(probe) != 1:
            raise DataError(path, f"not a face embedder: output {self.output_name} has shape "
                                  f"{tuple(probe.shape)} for one image; expected [1, D]")
        self.embedding_size = int(probe.shape[1])

    def weights_digest(self) -> str:
        return file_digest(self.source)

    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        if self.raw_pixels:                              # the graph normalises its uint8 input itself
            pixels = Framing(self.framing.input_size, self.framing.template, self.framing.channel_order, 0.0, 1.0)
            batch = pixels.normalize(torch.from_numpy(np.ascontiguousarray(frames)), self.layout)
            array = batch.round().clamp(0, 255).to(torch.uint8).numpy()
        else:
            array = self.framing.normalize(torch.from_numpy(np.ascontiguousarray(frames)), self.layout).numpy()
        out = self.session.run([self.output_name], {self.input.name: array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(len(array), -1))


@TEACHERS.register("onnx")
def build_onnx_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"),
                       amp: str = "none") -> OnnxTeacher:
    """The :class:`OnnxTeacher` of ``teacher.path`` with ``teacher.framing`` (``amp`` does not apply)."""
    path = existing_file(teacher_cfg.path or teacher_cfg.checkpoint, "teacher.kind=onnx: the ONNX model")
    return OnnxTeacher(path, framing_from_config(getattr(teacher_cfg, "framing", None), Framing()), device)
