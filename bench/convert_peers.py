#!/usr/bin/env python3
"""ONNX files of the public small face models of docs/RESULTS.md's peer table (issue 30).

    python3 bench/convert_peers.py --edgeface-repo runs/peers/src/edgeface \\
        --mobilefacenet-repo runs/peers/src/mobilefacenet --faces runs/cpu_scale/aligned/lfw \\
        --out runs/peers/onnx

Reads the public checkpoints from local copies of their repositories (nothing is downloaded;
nothing of theirs is in this repository) and writes, into ``--out`` (git-ignored ``runs/``):

- ``edgeface_xxs.onnx``, ``edgeface_xs.onnx``: EdgeFace-XXS / -XS (Idiap EdgeFace, BSD-3-Clause),
  ``checkpoints/edgeface_xxs_q.pt`` and ``checkpoints/edgeface_xs_q.pt`` of
  yayoimizuha/face_recognition_train @ 3e631e35.  Those are ``state_dict`` s of
  ``torch.quantization.quantize_dynamic(timm EdgeNeXt, {nn.Linear}, qint8)`` (the repository's
  ``backbones.get_model('edgeface_xxs_q')``).  The network is rebuilt here as the repository's
  ``TimmFRWrapperV2`` does (``timm.create_model(name)`` + ``reset_classifier(512)``, under
  ``.model``; none of its code is imported), quantised the same way, the checkpoint loaded
  strictly (``weights_only=True``), and every dynamically quantised Linear replaced by a float
  Linear holding its dequantised int8 weights (the weights stay exactly the published ones; only
  the activations' per-batch int8 rounding of dynamic quantisation is not reproduced: the ONNX is
  fp32).  Input: ``float32 [N, 3, 112, 112]`` RGB, ``(x - 127.5) / 127.5`` (the repository's
  ``inference.py``) -> ``facekd eval ... mean=127.5,std=127.5,channel_order=RGB``.
- ``mobilefacenet_ms1m.onnx``: foamliu/MobileFaceNet @ a6cc9032 ``weights/mobilefacenet.pt``
  (Apache-2.0), a ``state_dict`` (loaded strictly, ``weights_only=True``) of the repository's
  ``mobilefacenet.MobileFaceNet``, whose code is imported from ``--mobilefacenet-repo`` at run
  time (its ``custom_config`` import is satisfied by a stand-in module).  Its ImageNet
  normalisation (``data_gen.py``'s ``val`` transform: ``ToTensor`` + ``Normalize`` with ImageNet
  mean and std) is put into the graph: input ``float32 [N, 3, 112, 112]`` raw RGB 0..255 ->
  ``facekd eval ... mean=0,std=1``.

Each ONNX file (opset 17, TorchScript exporter, dynamic batch, BatchNorm folded) is checked
against its PyTorch model on ``--check-faces`` aligned faces from ``--faces`` (random pixels
without it): the max abs difference of the embeddings is printed (and, for EdgeFace, that of
the dynamically quantised model as published, for information).

Requires ``timm`` (``pip install timm``; 1.0.31 here) for EdgeFace: a requirement of this
script only, not of facekd.  The repositories: ``fetch`` them (or ``git clone``) and pass the
directories holding ``checkpoints/`` and ``mobilefacenet.py`` + ``weights/``.
"""
import argparse
import copy
import glob
import os
import sys
import types
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

EDGEFACE = {"edgeface_xxs": ("edgenext_xx_small", "checkpoints/edgeface_xxs_q.pt"),
            "edgeface_xs": ("edgenext_x_small", "checkpoints/edgeface_xs_q.pt")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17


# ------------------------------------------------------------------------------------- EdgeFace
class _TimmFR(nn.Module):
    """The parameter layout of the repository's ``TimmFRWrapperV2``: the timm model under ``.model``."""

    def __init__(self, timm_name: str, featdim: int = 512):
        super().__init__()
        import timm

        self.model = timm.create_model(timm_name, pretrained=False)
        self.model.reset_classifier(featdim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _dequantize_linears(module: nn.Module) -> int:
    """Replace every dynamically quantised Linear below ``module`` by a float one with its
    dequantised weights; the number replaced."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    count = 0
    for name, child in module.named_children():
        if isinstance(child, DynamicLinear):
            weight = child.weight().dequantize()
            bias = child.bias()
            linear = nn.Linear(child.in_features, child.out_features, bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias)
            setattr(module, name, linear)
            count += 1
        else:
            count += _dequantize_linears(child)
    return count


def load_edgeface(repo: str, variant: str):
    """(fp32 model with the checkpoint's dequantised weights, the dynamically quantised model)."""
    timm_name, rel = EDGEFACE[variant]
    path = os.path.join(repo, rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the checkpoint is missing (snapshots leave out files >= 4 MiB)")
    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    with warnings.catch_warnings():             # torch.ao.quantization's deprecation notice
        warnings.simplefilter("ignore")
        quantised = torch.ao.quantization.quantize_dynamic(_TimmFR(timm_name).eval(), qconfig_spec={nn.Linear},
                                                           dtype=torch.qint8)
        quantised.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))   # strict
    quantised.eval()
    fp32 = copy.deepcopy(quantised)
    replaced = _dequantize_linears(fp32)
    print(f"{variant}: {rel} ({timm_name}); {replaced} dynamic int8 Linear layers dequantised to fp32; "
          f"{sum(p.numel() for p in fp32.parameters()) / 1e6:.2f} M parameters")
    return fp32.eval(), quantised


# -------------------------------------------------------------------------------- MobileFaceNet
class _ImageNetNormalised(nn.Module):
    """Raw RGB 0..255 NCHW -> the network's ``ToTensor`` + ImageNet ``Normalize`` input."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) * self.inv_std)


def load_mobilefacenet(repo: str) -> nn.Module:
    path = os.path.join(repo, "weights", "mobilefacenet.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the checkpoint is missing (snapshots leave out files >= 4 MiB)")
    # mobilefacenet.py does `from custom_config import device, num_classes, emb_size` (for its
    # ArcFace head only): a stand-in, so nothing else of the repository runs
    sys.modules.setdefault("custom_config", types.SimpleNamespace(
        device=torch.device("cpu"), num_classes=1, emb_size=128))
    sys.path.insert(0, os.path.abspath(repo))
    try:
        from mobilefacenet import MobileFaceNet
    finally:
        sys.path.pop(0)
    net = MobileFaceNet()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))          # strict
    print(f"mobilefacenet_ms1m: weights/mobilefacenet.pt; "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters (BatchNorm unfolded)")
    return _ImageNetNormalised(net.eval()).eval()


# ---------------------------------------------------------------------------------- export, check
def export(model: nn.Module, path: str) -> None:
    example = torch.zeros(2, 3, 112, 112)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
                          do_constant_folding=True)


def load_faces(root: Optional[str], count: int, seed: int = 0) -> np.ndarray:
    """``count`` aligned 112 px RGB faces (uint8 N x 112 x 112 x 3) from ``root``, else random pixels."""
    rng = np.random.default_rng(seed)
    files: List[str] = []
    if root:
        for ext in ("jpg", "jpeg", "png"):
            files += glob.glob(os.path.join(root, "**", f"*.{ext}"), recursive=True)
    if not files:
        print("no faces found: checking on random pixels")
        return rng.integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)
    from PIL import Image

    chosen = sorted(files)
    chosen = [chosen[i] for i in rng.choice(len(chosen), size=min(count, len(chosen)), replace=False)]
    faces = []
    for file in chosen:
        image = Image.open(file).convert("RGB")
        if image.size != (112, 112):
            image = image.resize((112, 112), Image.BILINEAR)
        faces.append(np.asarray(image, dtype=np.uint8))
    return np.stack(faces)


def check(path: str, references: Dict[str, nn.Module], batch: torch.Tensor) -> Dict[str, float]:
    """Max abs difference between the ONNX file's embeddings and each reference model's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    diffs = {}
    for name, model in references.items():
        with torch.no_grad():
            want = model(batch).numpy()
        diffs[name] = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        cos = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        print(f"  {os.path.basename(path)} vs {name}: max abs diff {diffs[name]:.2e} "
              f"(max |embedding| {scale:.2f}; min cosine {cos.min():.6f}) on {len(batch)} faces")
    return diffs


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edgeface-repo", help="yayoimizuha/face_recognition_train @ 3e631e35 (holds checkpoints/)")
    parser.add_argument("--mobilefacenet-repo", help="foamliu/MobileFaceNet @ a6cc9032 (mobilefacenet.py, weights/)")
    parser.add_argument("--out", default="runs/peers/onnx", help="output folder (default runs/peers/onnx)")
    parser.add_argument("--faces", help="a folder of aligned 112 px faces for the check (default: random pixels)")
    parser.add_argument("--check-faces", type=int, default=8, help="faces in the check (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if not args.edgeface_repo and not args.mobilefacenet_repo:
        parser.error("give --edgeface-repo and/or --mobilefacenet-repo")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    faces = torch.from_numpy(load_faces(args.faces, args.check_faces)).permute(0, 3, 1, 2).float()

    jobs: List[Callable[[], None]] = []
    failed = []
    if args.edgeface_repo:
        for variant in EDGEFACE:
            def job(variant=variant):
                fp32, quantised = load_edgeface(args.edgeface_repo, variant)
                path = os.path.join(args.out, f"{variant}.onnx")
                export(fp32, path)
                print(f"wrote {path}")
                check(path, {"PyTorch fp32 (dequantised weights)": fp32,
                             "PyTorch dynamic int8 as published": quantised}, (faces - 127.5) / 127.5)
            jobs.append(job)
    if args.mobilefacenet_repo:
        def job():
            model = load_mobilefacenet(args.mobilefacenet_repo)
            path = os.path.join(args.out, "mobilefacenet_ms1m.onnx")
            export(model, path)
            print(f"wrote {path}")
            check(path, {"PyTorch": model}, faces)
        jobs.append(job)
    for job in jobs:
        try:
            job()
        except FileNotFoundError as error:
            print(f"not converted: {error}")
            failed.append(str(error))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
