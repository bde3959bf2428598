"""dlib's face ResNet (``dlib_face_recognition_resnet_model_v1``) as a torch module.

The layers come from :func:`facekd.models.dlib_format.parse_face_resnet` and run in dlib's
order, with dlib's semantics:

- input: RGB pixels (0..255, float or uint8, ``N x 3 x 150 x 150``) become
  ``(pixel - channel mean) / 256`` (``input_rgb_image_sized``);
- ``con``: cross-correlation with dlib's default padding (``kernel/2`` at stride 1, none at
  stride 2 — so the 7x7/2 stem and the 3x3/2 downsampling convolutions are unpadded);
  each ``affine`` (``gamma * x + beta`` per channel) is folded into the convolution before it;
- ``max_pool`` 3x3/2 and ``avg_pool`` 2x2/2 unpadded; ``avg_pool`` over everything at the end;
- ``tag``/``skip``/``add_prev``: ``add_prev`` adds the tagged output, and where the two
  differ in shape (channels 32 -> 64, or the 3x3 convolution branch beside the 4x4 pooled
  skip of the last stages) the sum has the larger shape and each side counts as zero
  outside its own extent (dlib's ``tt::add``);
- ``fc_no_bias`` to 128, no normalisation (dlib's descriptor is this raw vector).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.fileio import PathLike
from facekd.models.dlib_format import DlibLayer, parse_face_resnet

#: dlib's input scale: ``(pixel - mean) / 256``
DLIB_INPUT_SCALE = 256.0


def padded_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` over the larger of the two shapes, each zero outside its own extent (dlib ``add_prev``)."""
    if x.shape == y.shape:
        return x + y
    shape = [max(a, b) for a, b in zip(x.shape, y.shape)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))
    return grow(x) + grow(y)


def _fold_affine(con: DlibLayer, affine: DlibLayer) -> nn.Conv2d:
    gamma, beta = affine.params["gamma"], affine.params["beta"]
    weight = con.params["weight"] * gamma[:, None, None, None]
    bias = con.params["bias"] * gamma + beta
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], con.args["kernel"], con.args["stride"],
                     con.args["padding"], bias=True)
    conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
    conv.bias.data.copy_(torch.from_numpy(bias))
    return conv


class DlibFaceResNet(nn.Module):
    """dlib's 29-convolution face ResNet: RGB pixels ``N x 3 x 150 x 150`` -> raw ``N x 128`` descriptors.

    Build it with :meth:`from_file`.  :attr:`steps` is the layer program, input side first:
    ``(op, argument)`` with op ``conv`` (index into :attr:`convs`), ``relu``, ``max_pool`` /
    ``avg_pool`` (kernel, stride), ``pool_all``, ``tag`` / ``skip`` / ``add_prev`` (tag id) and ``fc``.
    """

    input_size = 150
    embedding_size = 128

    def __init__(self, layers: List[DlibLayer]) -> None:
        super().__init__()
        mean = torch.from_numpy(layers[0].params["mean"]).view(1, 3, 1, 1)
        self.register_buffer("mean", mean)
        self.convs = nn.ModuleList()
        self.steps: List[Tuple[str, object]] = []
        body = layers[1:-1]
        index = 0
        while index < len(body):
            layer = body[index]
            if layer.kind == "con":
                self.steps.append(("conv", len(self.convs)))
                self.convs.append(_fold_affine(layer, body[index + 1]))
                index += 2
                continue
            if layer.kind == "fc":
                weight = torch.from_numpy(layer.params["weight"])
                self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                self.fc.weight.data.copy_(weight)
                self.steps.append(("fc", None))
            elif layer.kind in ("max_pool", "avg_pool") and layer.args["kernel"]:
                self.steps.append((layer.kind, (layer.args["kernel"], layer.args["stride"])))
            elif layer.kind == "avg_pool":
                self.steps.append(("pool_all", None))
            else:
                self.steps.append((layer.kind, layer.args.get("id")))
            index += 1

    @classmethod
    def from_file(cls, path: PathLike) -> "DlibFaceResNet":
        """The network of dlib's ``.dat`` file (:func:`parse_face_resnet`), in eval mode."""
        return cls(parse_face_resnet(path)).eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw 128-d descriptors of RGB pixels ``N x 3 x 150 x 150`` (0..255, any dtype)."""
        x = (pixels.to(self.mean.dtype) - self.mean) / DLIB_INPUT_SCALE
        tags: Dict[object, torch.Tensor] = {}
        for op, arg in self.steps:
            if op == "conv":
                x = self.convs[arg](x)
            elif op == "relu":
                x = F.relu(x)
            elif op == "max_pool":
                x = F.max_pool2d(x, arg[0], arg[1])
            elif op == "avg_pool":
                x = F.avg_pool2d(x, arg[0], arg[1])
            elif op == "pool_all":
                x = x.mean(dim=(2, 3))
            elif op == "tag":
                tags[arg] = x
            elif op == "skip":
                x = tags[arg]
            elif op == "add_prev":
                x = padded_add(x, tags[arg])
            else:                                  # fc
                x = self.fc(x.flatten(1).float())
        return x


class FacekdInputAdapter(nn.Module):
    """A :class:`DlibFaceResNet` behind facekd's input convention (``(x/255 - 0.5)/0.5``, NCHW).

    For :func:`facekd.export.onnx_export.export_onnx`, whose ``uint8`` input format puts that
    normalisation in the graph: this adapter turns it back into pixels, so the exported graph
    takes raw uint8 NHWC RGB chips, as the ONNX teacher feeds a uint8 graph.
    """

    def __init__(self, network: DlibFaceResNet) -> None:
        super().__init__()
        self.network = network
        self.input_size = network.input_size
        self.embedding_size = network.embedding_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors of facekd-normalised ``N x 3 x 150 x 150`` chips."""
        return self.network((x * 0.5 + 0.5) * 255.0)
