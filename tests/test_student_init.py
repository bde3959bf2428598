"""Transfer, then distil (Karlekar et al. 2019): a student initialised from its teacher."""
import pytest
import torch

from facekd.config import ModelConfig
from facekd.errors import ConfigError
from facekd.models import build_model
from facekd.training.student_init import architecture_differences, init_student_from_teacher

SMALL = {"width": [8, 8, 16, 16]}


def small_cfg(**overrides):
    values = dict(name="iresnet18", embedding_size=32, input_size=32, params=dict(SMALL))
    values.update(overrides)
    return ModelConfig(**values)


def trained_looking(model, seed):
    """Random weights and BN statistics, so a copy that missed anything would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.rand(tensor.shape, generator=generator) + 0.5 if "running_var" in name \
                    else 0.1 * torch.randn(tensor.shape, generator=generator)
                tensor.copy_(values)
    return model


@pytest.mark.parametrize("cfg", [small_cfg(), ModelConfig(name="mobilefacenet", embedding_size=16, input_size=32)])
def test_student_outputs_equal_teacher_outputs_after_init(cfg):
    torch.manual_seed(0)
    teacher = trained_looking(build_model(cfg), seed=1).eval().requires_grad_(False)
    student = build_model(cfg)
    images = torch.randn(3, 3, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert not torch.allclose(student.eval()(images), teacher(images), atol=1e-3)
    init_student_from_teacher(student, cfg, teacher, cfg)
    with torch.no_grad():
        expected = teacher(images)
        assert torch.equal(student.eval()(images), expected)
        assert torch.equal(student.forward_features(images)[0], teacher.forward_features(images)[0])
    for (name, own), (_, source) in zip(student.state_dict().items(), teacher.state_dict().items()):
        assert torch.equal(own, source), name
    # the student owns copies and stays trainable: training it leaves the teacher alone
    assert any(p.requires_grad for p in student.parameters())
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
        assert torch.equal(teacher(images), expected)


def test_weight_free_params_may_differ_and_yaml_lists_equal_tuples():
    teacher_cfg = small_cfg(params={"width": (8, 8, 16, 16), "dropout": 0.0})
    student_cfg = small_cfg(params={"width": [8, 8, 16, 16], "dropout": 0.4})
    assert architecture_differences(student_cfg, teacher_cfg) == []
    teacher = trained_looking(build_model(teacher_cfg), seed=3).eval()
    student = build_model(student_cfg)
    init_student_from_teacher(student, student_cfg, teacher, teacher_cfg)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.eval()(images), teacher(images))


@pytest.mark.parametrize("student_cfg, expected", [
    (ModelConfig(name="mobilefacenet", embedding_size=32, input_size=32),
     ["name: student 'mobilefacenet', teacher 'iresnet18'", "params.width: student '<default>'"]),
    (small_cfg(embedding_size=16), ["embedding_size: student 16, teacher 32"]),
    (small_cfg(input_size=16), ["input_size: student 16, teacher 32", "degrade:"]),
    (small_cfg(params={"width": [8, 8, 16, 32]}), ["params.width: student (8, 8, 16, 32), teacher (8, 8, 16, 16)"]),
])
def test_mismatched_architecture_is_refused_naming_both(student_cfg, expected):
    teacher_cfg = small_cfg()
    teacher = build_model(teacher_cfg)
    student = build_model(student_cfg)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ConfigError) as error:
        init_student_from_teacher(student, student_cfg, teacher, teacher_cfg)
    message = str(error.value)
    assert f"student {student_cfg.name!r}" in message and "teacher 'iresnet18'" in message
    for part in expected:
        assert part in message
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())   # left untouched


def test_modules_that_do_not_match_their_configs_are_refused():
    cfg = small_cfg()
    wider = build_model(small_cfg(params={"width": [8, 8, 16, 32]}))   # not what cfg says
    with pytest.raises(ConfigError, match=r"shape differences \['bn2.bias: student \(16,\), teacher \(32,\)"):
        init_student_from_teacher(build_model(cfg), cfg, wider, cfg)
