"""bench/peer_table.py: graph counts, results reading, the Markdown table (no timing thresholds)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from facekd.models.complexity import count_macs

from conftest import load_script

peers = load_script("bench/peer_table.py")


class Tiny(nn.Module):
    """A conv, an activation x activation MatMul (as in attention) and a Linear behind a reshape
    whose shape is computed at run time (what ONNX shape inference cannot follow)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        c = self.conv(x)                                   # [N, 4, 8, 8]
        f = c.flatten(2)                                   # [N, 4, 64]
        g = torch.matmul(f, f.transpose(1, 2))             # [N, 4, 4]: 16 x 64 MACs
        h = self.fc(c.reshape(c.shape[0], -1))             # [N, 5]
        return h + g.flatten(1)[:, :5]


def export_tiny(tmp_path):
    model = Tiny().eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 16, 16), str(path), input_names=["input"], output_names=["out"],
                      dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}}, opset_version=17, dynamo=False)
    return model, str(path)


def test_graph_counts_params_and_every_mac_including_attention_products(tmp_path):
    model, path = export_tiny(tmp_path)
    counts = peers.graph_complexity(path)
    assert counts["params"] == sum(p.numel() for p in model.parameters())
    conv = 4 * 8 * 8 * 3 * 3 * 3
    assert counts["macs"] == conv + 4 * 4 * 64 + 5 * 256
    assert count_macs(model, 16) == conv + 5 * 256       # facekd's module count leaves the MatMul out
    assert counts["input_size"] == 16


def fake_results(label, sets):
    val_sets, results = [], {}
    for name, kind, acc, tar in sets:
        val_sets.append({"name": name, "kind": kind, "path": f"/data/{name}", "num_pairs": 100})
        reached = tar > 0.5                 # as facekd eval writes it: tar_mean null when not reached
        results[name] = {"flip": {"accuracy_mean": acc, "accuracy_std": 0.01, "tar_at_far": {"0.001": {
            "tar_mean": tar if reached else None, "tar_measured": tar, "reached": reached, "far_mean": 0.004}}}}
    return {"val_sets": val_sets, "models": [{"label": label, "results": results}]}


def test_results_of_several_files_merge_by_label_into_one_row(tmp_path):
    a, b = tmp_path / "lfw.json", tmp_path / "cfp.json"
    a.write_text(json.dumps(fake_results("M", [("lfw_pairsDevTest", "lfw", 0.99, 0.9)])))
    b.write_text(json.dumps(fake_results("M", [("cfp_fp", "cfp_fp", 0.93, 0.4)])))
    evals = peers.load_eval([str(a), str(b)])
    assert evals["M"]["devtest"]["acc"] == 99.0 and evals["M"]["cfp_fp"]["acc"] == 93.0
    complexity = {"M": {"params": 1_240_000, "macs": 47_000_000, "input_size": 112}}
    timing = {"M": {"median_ms": 2.5, "cpu_median_ms": 2.25}}
    meta = {"M": {"training_data": "WebFace12M", "source": "s", "licence": "BSD-3"}}
    table = peers.markdown(["M"], evals, complexity, timing, meta)
    row = table.splitlines()[2]
    assert row == ("| M | 1.24 M | 47 M | WebFace12M | 99.00 ± 1.00 | 93.00 ± 1.00 | 40.0 (FAR not reached: 4.0e-03) "
                   "| 2.50 / 2.25 | s | BSD-3 |")
    short = peers.markdown(["M"], evals, {}, {}, {}, short=True).splitlines()
    assert len(short[0].split("|")) == 10 and short[2].startswith("| M | – | – | – | 99.00 | 93.00 |")


def test_command_line_times_each_model_and_saves_what_it_timed(tmp_path, capsys):
    _, path = export_tiny(tmp_path)
    timing = tmp_path / "timing.json"
    assert peers.main(["--onnx", f"tiny={path}", "--runs", "3", "--warmup", "1",
                       "--timing-out", str(timing)]) == 0
    saved = json.loads(timing.read_text())
    assert saved["timing"]["models"]["tiny"]["runs"] == 3 and saved["timing"]["models"]["tiny"]["median_ms"] > 0
    assert saved["complexity"]["tiny"]["macs"] > 0
    out = capsys.readouterr().out
    assert saved["timing"]["models"]["tiny"]["cpu_median_ms"] > 0
    assert "| tiny |" in out and "medians of 3 interleaved rounds" in out
    assert peers.main(["--onnx", f"tiny={path}", "--timing-in", str(timing)]) == 0


def test_time_interleaved_reads_the_clock_it_is_given():
    from facekd.export import timing

    clock, wall = [0.0], [0.0]

    def call():                         # 1 ms of CPU, 3 ms of wall (descheduled for 2)
        clock[0] += 0.001
        wall[0] += 0.003

    times = timing.time_interleaved({"m": call}, runs=4, warmup=1, block_seconds=0.0, clock=lambda: clock[0])
    assert times["m"] == [pytest.approx(0.001)] * 4


def test_labels_are_renamed_before_the_files_merge(tmp_path, capsys):
    a, b = tmp_path / "lfw.json", tmp_path / "cfp.json"
    a.write_text(json.dumps(fake_results("dlib ResNet", [("lfw_pairsDevTest", "lfw", 0.985, 0.9)])))
    b.write_text(json.dumps(fake_results("dlib", [("cfp_fp", "cfp_fp", 0.9057, 0.413)])))
    evals = peers.load_eval([str(a), str(b)], {"dlib ResNet": "dlib"})
    assert list(evals) == ["dlib"] and set(evals["dlib"]) == {"devtest", "cfp_fp"}
    assert peers.main(["--eval", str(a), str(b), "--label", "dlib ResNet=dlib", "--no-timing", "--short"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| dlib")]
    assert rows == ["| dlib | – | – | ~3 M faces, 7.5 k ids (FaceScrub, VGG Face, web images) | 98.50 | 90.57 "
                    "| 41.3 (FAR not reached: 4.0e-03) | – |"]
    with pytest.raises(SystemExit):
        peers.main(["--eval", str(a), "--label", "dlib ResNet", "--no-timing"])
