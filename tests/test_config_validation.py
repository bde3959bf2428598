"""Every config value is checked before a run starts (issue 31): ranges beside the fields, rules
between fields, names against the registries, the commands' numeric options.

The fuzz tests set every key of the config's fields (and every section above one) to hostile values
with ``--set``: wrong types, out of range, huge, negative, zero, NaN, infinity, empty, a mapping
or list where a scalar belongs.  Loading (:func:`facekd.config.load_config`) plus the registry
checks (:func:`facekd.training.preflight.check_run`) must either accept the config or raise
:class:`~facekd.errors.ConfigError` with one line that names the key (or the ``losses.<i>``
entry it belongs to) — never another exception.  Nothing trains there; one test runs a tiny
accepted config for two steps.  ``python3 tests/test_config_validation.py`` prints the counts
that docs/HOSTILE_INPUTS.md states.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

from facekd.cli import main
from facekd.config import (CONFIG_DIR, MIN_INPUT_SIZE, ExperimentConfig, Origins, TeacherConfig, load_config,
                           load_yaml_with_bases, to_dict)
from facekd.errors import ConfigError
from facekd.training.preflight import check_run

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import write_config  # noqa: E402


def dotted_keys(node: Any, prefix: str = "") -> List[str]:
    """Every key of a parsed YAML file, sections and list entries included (``losses.0.scale``)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    keys = []
    for key, value in items:
        dotted = f"{prefix}{key}"
        keys += [dotted, *dotted_keys(value, dotted + ".")]
    return keys


#: configs/base.yaml's keys (it sets none now), then those of the fields at their defaults and the teacher section's
KEYS = list(dict.fromkeys(dotted_keys(load_yaml_with_bases(CONFIG_DIR / "base.yaml"))
                          + dotted_keys(to_dict(ExperimentConfig())) + dotted_keys({"teacher": to_dict(TeacherConfig())})))

#: the values every key gets in the sweep (as YAML text after ``--set key=``)
HOSTILE = ["-1", "0", "-3", "1000000000000", "1e400", "-1e400", "2.5", ".nan", ".inf", "-.inf", "nan", "''",
           "abc", "null", "true", "[]", "[1, -2]", "{}", "{a: 1}", "[{}]", "99999999999999999999999999999"]

#: hypothesis's values beyond the sweep's, dumped as YAML
VALUES = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                   st.none(), st.booleans(), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.sampled_from(["a", "name", "weight"]), st.integers(-2, 2), max_size=2))


def as_yaml(value: Any) -> str:
    """``value`` as the YAML text of a ``--set`` (one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


def names(key: str) -> Tuple[str, ...]:
    """What a refusal of ``key`` may name: the key, or the list entry it belongs to (``losses.0``)."""
    parts = key.split(".")
    entries = tuple(".".join(parts[:i + 1]) for i, part in enumerate(parts) if part.isdigit())
    return (key, *entries)


def outcome(key: str, text: str) -> str:
    """``accepted`` or ``refused`` for ``--set key=text``; fails on anything else."""
    assignment = f"{key}={text}"
    try:
        check_run(load_config(None, [assignment]), "student" if key.startswith("teacher") else "teacher")
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message, message
        origin = f"--set {assignment}: "
        problem = message[len(origin):] if message.startswith(origin) else message
        assert any(name in problem for name in names(key)), (assignment, message)
        return "refused"
    return "accepted"


def sweep() -> Dict[str, int]:
    """Every key with every :data:`HOSTILE` value; the counts of each outcome."""
    return dict(collections.Counter(outcome(key, text) for key in KEYS for text in HOSTILE))


def test_the_keys_cover_base_yaml():
    assert {"optim.lr", "train.epochs", "model.input_size", "val.sets.0.kind", "losses.0.scale", "data"} <= set(KEYS)
    assert {"teacher.views", "teacher.framing.std", "train.prefetch_factor"} <= set(KEYS) and len(KEYS) > 90


def test_every_key_with_every_hostile_value_is_accepted_or_refused_by_name():
    counts = sweep()
    assert counts["refused"] > counts.get("accepted", 0) > 0


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_fuzzed_values_are_accepted_or_refused_by_name(key, value):
    outcome(key, as_yaml(value))


def test_the_shipped_configs_pass_every_check():
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(path)
        check_run(cfg, "student" if cfg.teacher is not None else "teacher")


def test_a_refusal_names_the_file_that_set_the_key(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: -0.5}\n")
    (tmp_path / "exp.yaml").write_text("_base_: base.yaml\ntrain: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"^/.*/base\.yaml: optim\.lr must be > 0, got -0\.5$"):
        load_config(tmp_path / "exp.yaml")
    with pytest.raises(ConfigError, match=r"^--set train\.epochs=0: train\.epochs must be >= 1, got 0$"):
        load_config(tmp_path / "exp.yaml", ["optim.lr=0.1", "train.epochs=0"])
    origins = Origins()
    load_config(tmp_path / "exp.yaml", ["optim.lr=0.1"], origins)
    assert origins.of("train.epochs") == str(tmp_path / "exp.yaml")
    assert origins.of("optim.lr") == "--set optim.lr=0.1" and origins.of("seed") == "<defaults>"


@pytest.mark.parametrize("overrides, message", [
    (["optim.warmup_epochs=9"], r"optim\.warmup_epochs=9 is longer than the run \(train\.epochs=4\)"),
    (["optim.min_lr=1"], r"optim\.min_lr=1 is above optim\.lr=0\.1"),
    (["optim.scheduler=step"], r"optim\.scheduler=step needs optim\.milestones"),
    (["optim.scheduler=step", "optim.milestones=[2, 7]"], r"optim\.milestones \[7\.0\] lie after the last epoch"),
    (["degrade.min_size=60"], r"degrade\.min_size=60 is above degrade\.max_size=56"),
    (["train.unlabelled_per_batch=4"], r"train\.unlabelled_per_batch=4 but data\.unlabelled names no folder"),
    (["val.select_best_on=lfw"], r"val\.select_best_on='lfw' is not a val set"),
    (["teacher.targets=view_cache"], r"view_cache needs teacher\.views >= 1, got 0"),
    (["data.num_identities=8"], r"train\.identities_per_batch=16 is more than the data\.num_identities=8"),
])
def test_values_that_contradict_each_other_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_batch_that_folder_data_cannot_fill_is_refused():
    from types import SimpleNamespace

    from facekd.training.preflight import check_batch_fits

    labels = [0, 0, 1, 1, 1, 2]
    check_batch_fits(labels, SimpleNamespace(identities_per_batch=3, images_per_identity=3))
    with pytest.raises(ConfigError, match=r"identities_per_batch=4: the training data has 3 identities"):
        check_batch_fits(labels, SimpleNamespace(identities_per_batch=4, images_per_identity=1))
    with pytest.raises(ConfigError, match=r"images_per_identity=4: no identity .* has that many images \(at most 3\)"):
        check_batch_fits(labels, SimpleNamespace(identities_per_batch=1, images_per_identity=4))


def test_both_backbones_run_at_the_minimum_input_size():
    import torch

    from facekd.models import MODELS

    for name, params in (("mobilefacenet", {}), ("iresnet18", {"width": [8, 16, 32, 64]})):
        model = MODELS.build(name, embedding_size=8, input_size=MIN_INPUT_SIZE, **params).eval()
        assert model(torch.zeros(2, 3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)).shape == (2, 8)


# --------------------------------------------------------------------------- through the command line

def run_cli(argv: List[str], capsys) -> Tuple[int, List[str]]:
    """``facekd ARGV`` in this process: the exit code and the non-empty stderr lines."""
    try:
        code = main(argv)
    except SystemExit as exit_:            # argparse refuses an option value
        code = exit_.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


#: issue 31's table: each override of `facekd train-student` on the built-in data, and what the one line names
ISSUE_TABLE = [
    ("optim.lr=-1", "optim.lr must be > 0, got -1.0"),
    ("optim.weight_decay=-5", "optim.weight_decay must be >= 0, got -5.0"),
    ("train.identities_per_batch=0", "train.identities_per_batch must be >= 1, got 0"),
    ("data.num_workers=-2", "data.num_workers must be in [0, 256], got -2"),
    ("train.epochs=-3", "train.epochs must be >= 1, got -3"),
    ("train.images_per_identity=1000", "train.images_per_identity=1000 is more than the data.images_per_identity="),
    ("model.input_size=7", "model.input_size must be in [16, 1024], got 7"),
]


@pytest.mark.parametrize("override, message", ISSUE_TABLE, ids=[row[0] for row in ISSUE_TABLE])
def test_issue_table_row_exits_2_with_one_line_naming_the_key(override, message, capsys, tmp_path):
    code, lines = run_cli(["train-student", "--set", override, "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"facekd train-student: error: --set {override}: "), lines
    assert message in lines[0]
    assert not (tmp_path / "run").exists()


def test_checkpoint_every_steps_zero_writes_last_pt_at_epoch_ends_only(tmp_path, capsys):
    """``train.checkpoint_every_steps: 0`` does what base.yaml says; a valid run still trains."""
    config = write_config(tmp_path / "tiny.yaml", tmp_path / "run")
    code, _ = run_cli(["train-teacher", "--config", str(config), "--set", "train.checkpoint_every_steps=0",
                       "--set", "train.max_steps_per_epoch=2", "--device", "cpu"], capsys)
    assert code == 0
    assert (tmp_path / "run" / "last.pt").exists() and not list((tmp_path / "run").glob("step_*.pt"))
    assert "0: last.pt only at the end of each epoch" in (CONFIG_DIR / "base.yaml").read_text()


@pytest.mark.parametrize("argv, option", [
    (["eval", "--model", "m.pt", "--val", "synthetic", "--batch-size", "0"], "--batch-size"),
    (["eval", "--model", "m.pt", "--val", "synthetic", "--latency-runs", "-1"], "--latency-runs"),
    (["eval", "--model", "m.pt", "--val", "synthetic", "--folds", "1"], "--folds"),
    (["eval", "--model", "m.pt", "--val", "synthetic", "--far", ""], "--far"),
    (["eval", "--model", "m.pt", "--val", "synthetic", "--sizes", "112,-5"], "--sizes"),
    (["export", "m.pt", "--out", "m.onnx", "--input-size", "7"], "--input-size"),
    (["export", "m.pt", "--out", "m.onnx", "--calib-count", "0"], "--calib-count"),
    (["align", "src", "dst", "--workers", "0"], "--workers"),
    (["align", "src", "dst", "--min-score", "nan"], "--min-score"),
    (["verify", "m.onnx", "a.jpg", "b.jpg", "--threshold", "2"], "--threshold"),
    (["int8-finetune", "m.pt", "--faces", "f", "--out", "o.pt", "--batch-size", "0"], "--batch-size"),
    (["int8-finetune", "m.pt", "--faces", "f", "--out", "o.pt", "--steps", "-1"], "--steps"),
    (["int8-finetune", "m.pt", "--faces", "f", "--out", "o.pt", "--lr", "-1e-5"], "--lr"),
    (["export-teacher", "--out", "t.onnx", "--check-faces", "-2"], "--check-faces"),
])
def test_command_option_out_of_range_exits_2_with_one_line(argv, option, capsys):
    code, lines = run_cli(argv, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"facekd {argv[0]}: error: argument {option}: "), lines


def test_bench_scripts_share_the_option_types():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import make_pair_list

    with pytest.raises(SystemExit) as refused:
        make_pair_list.main(["root", "--out", "pairs.txt", "--pairs", "0"])
    assert refused.value.code == 2


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    counts = sweep()
    print(f"{len(KEYS)} keys x {len(HOSTILE)} values = {sum(counts.values())} cases: {counts} "
          f"in {time.perf_counter() - start:.1f} s")
