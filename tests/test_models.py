"""Backbones: insightface-compatible IResNet names/shapes, published sizes, checkpoint loading."""
from __future__ import annotations

import pytest
import torch

from facekd.errors import CheckpointError, DataError
from facekd.models import MODELS, count_macs, count_parameters, load_pretrained
from facekd.models.checkpoint import extract_state_dict

DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3),
          "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}


def insightface_iresnet_manifest(layers, num_features=512, fc_scale=49):
    """Keys and shapes of an insightface arcface_torch iresnet state dict, written out from
    its published architecture (independently of facekd's module tree)."""
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    keys = {"conv1.weight": (64, 3, 3, 3), **bn("bn1", 64), "prelu.weight": (64,)}
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            cin = inplanes if b == 0 else planes
            keys.update(bn(f"{p}.bn1", cin))
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            keys.update(bn(f"{p}.bn2", planes))
            keys[f"{p}.prelu.weight"] = (planes,)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn(f"{p}.bn3", planes))
            if b == 0:   # every stage starts with stride 2, so it has a projection shortcut
                keys[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                keys.update(bn(f"{p}.downsample.1", planes))
        inplanes = planes
    keys.update(bn("bn2", 512))
    keys["fc.weight"] = (num_features, 512 * fc_scale)
    keys["fc.bias"] = (num_features,)
    keys.update(bn("features", num_features))
    return keys


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_iresnet_state_dict_matches_insightface(name):
    model = MODELS.build(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == insightface_iresnet_manifest(DEPTHS[name])
    assert model.features.weight.requires_grad is False


def test_published_sizes():
    r100 = MODELS.build("iresnet100")
    assert count_parameters(r100) / 1e6 == pytest.approx(65.2, abs=0.1)
    assert count_macs(r100, 112) / 1e9 == pytest.approx(12.1, abs=0.05)
    mbf = MODELS.build("mobilefacenet", embedding_size=128)
    assert count_parameters(mbf) == pytest.approx(0.99e6, rel=0.02)
    assert count_macs(mbf, 112) == pytest.approx(221e6, rel=0.02)


def test_mac_counter_on_a_hand_sized_network():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 4 * 4, 10))
    assert count_macs(net, 4) == 8 * 4 * 4 * 3 * 9 + 128 * 10
    assert count_parameters(net) == 8 * 3 * 9 + 8 + 128 * 10 + 10


@pytest.mark.parametrize("input_size, kernel", [(112, 7), (56, 4), (64, 4)])
def test_mobilefacenet_input_size_adapts_gdconv(input_size, kernel):
    model = MODELS.build("mobilefacenet", embedding_size=128, input_size=input_size).eval()
    assert model.gdconv[0].kernel_size == (kernel, kernel)
    feature_map, embedding = model.forward_features(torch.randn(2, 3, input_size, input_size))
    assert embedding.shape == (2, 128)
    assert feature_map.shape == (2, 512, kernel, kernel)


def test_mobilefacenet_structure_follows_table_1():
    model = MODELS.build("mobilefacenet", embedding_size=512)
    strides = [b.block[1][0].stride[0] for b in model.bottlenecks]
    channels = [b.block[2][0].out_channels for b in model.bottlenecks]
    assert len(model.bottlenecks) == 5 + 1 + 6 + 1 + 2
    assert strides == [2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1]
    assert channels == [64] * 5 + [128] * 10
    assert model.gdconv[0].groups == 512 and model.gdconv[0].kernel_size == (7, 7)
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 512)


def test_iresnet_small_input_and_forward_features():
    model = MODELS.build("iresnet18", embedding_size=128, input_size=56).eval()
    assert model.fc.in_features == 512 * 4 * 4
    fmap, emb = model.forward_features(torch.randn(2, 3, 56, 56))
    assert fmap.shape == (2, 512, 4, 4) and emb.shape == (2, 128)
    assert torch.equal(model(torch.zeros(1, 3, 56, 56)), model.forward_features(torch.zeros(1, 3, 56, 56))[1])


def _trained_like(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_load_plain_backbone_pth_strict(tmp_path):
    source = _trained_like(MODELS.build("iresnet18")).eval()
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)   # insightface saves a bare state dict
    target = MODELS.build("iresnet18").eval()
    report = load_pretrained(target, path)
    assert report.exact
    x = torch.randn(2, 3, 112, 112)
    assert torch.equal(source(x), target(x))


def test_load_checkpoint_dict_with_ddp_prefix(tmp_path):
    source = _trained_like(MODELS.build("mobilefacenet", embedding_size=128))
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()},
                "epoch": 3}, path)
    target = MODELS.build("mobilefacenet", embedding_size=128)
    load_pretrained(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_shape_mismatch_names_the_key(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(MODELS.build("iresnet18", embedding_size=256).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"fc\.weight.*\(256, 25088\).*\(512, 25088\)"):
        load_pretrained(MODELS.build("iresnet18"), path)


def test_missing_and_unexpected_keys_reported(tmp_path):
    state = MODELS.build("iresnet18").state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\) \['fc.bias'\].*1 unexpected key\(s\) \['extra.weight'\]"):
        load_pretrained(MODELS.build("iresnet18"), path)
    report = load_pretrained(MODELS.build("iresnet18"), path, strict=False)
    assert report.missing == ["fc.bias"] and report.unexpected == ["extra.weight"]


def test_unreadable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="broken.pth: not a readable PyTorch checkpoint"):
        load_pretrained(MODELS.build("iresnet18"), path)
    with pytest.raises(DataError, match="nope.pth: checkpoint file not found"):
        load_pretrained(MODELS.build("iresnet18"), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        extract_state_dict({"epoch": 1}, "x.pt")


def test_registry_rejects_unknown_model_and_argument():
    with pytest.raises(KeyError, match="unknown model 'resnet9'.*iresnet100.*mobilefacenet"):
        MODELS.build("resnet9")
    with pytest.raises(TypeError, match=r"takes no argument\(s\) \['depth'\]"):
        MODELS.build("mobilefacenet", depth=3)
