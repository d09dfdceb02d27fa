import dataclasses

import pytest

from facedistill.errors import FaceDistillError, RecipeError
from facedistill.losses.config import DistillConfig, ILEDConfig, RKDConfig, RPSDConfig


def test_defaults_match_method_md():
    c = DistillConfig()
    assert (c.type, c.lambda_iled, c.lambda_rpsd, c.weight) == ("unified", 1.0, 1.0, 1.0)
    assert c.iled == ILEDConfig("topk", 0.5, 1.0, 0.1, 0)
    assert c.rpsd == RPSDConfig(8192, 64, 0, "smooth_l1", 0.01, 0.1, True, True, None)
    assert c.rpsd.effective_warmup_entries() == 64
    assert c.rkd == RKDConfig(25.0, 50.0)
    c.validate()


def test_nested_dataclasses_have_simple_field_types():
    allowed = {"float", "int", "bool", "str", "Optional[int]", "ILEDConfig", "RPSDConfig", "RKDConfig"}
    for cls in (DistillConfig, ILEDConfig, RPSDConfig, RKDConfig):
        for f in dataclasses.fields(cls):
            assert f.type in allowed, (cls.__name__, f.name, f.type)


def _err(cfg: DistillConfig, path: str = "loss.distill") -> str:
    with pytest.raises(RecipeError) as exc:
        cfg.validate(path)
    assert isinstance(exc.value, FaceDistillError)
    return str(exc.value)


def test_unknown_type_suggests_close_match():
    msg = _err(DistillConfig(type="unifed"))
    assert msg.startswith("loss.distill.type:")
    assert "did you mean 'unified'" in msg


def test_unknown_variant_and_mining_name_their_paths():
    msg = _err(DistillConfig(rpsd=RPSDConfig(variant="kll")))
    assert "loss.distill.rpsd.variant" in msg and "'kl'" in msg
    assert "loss.distill.iled.mining" in _err(DistillConfig(iled=ILEDConfig(mining="topK")))


@pytest.mark.parametrize(
    "cfg, key",
    [
        (DistillConfig(lambda_iled=-1.0), "loss.distill.lambda_iled"),
        (DistillConfig(lambda_rpsd=-0.1), "loss.distill.lambda_rpsd"),
        (DistillConfig(weight=-2.0), "loss.distill.weight"),
        (DistillConfig(weight=float("nan")), "loss.distill.weight"),
        (DistillConfig(iled=ILEDConfig(rho=0.0)), "loss.distill.iled.rho"),
        (DistillConfig(iled=ILEDConfig(rho=1.5)), "loss.distill.iled.rho"),
        (DistillConfig(iled=ILEDConfig(tau=0.0)), "loss.distill.iled.tau"),
        (DistillConfig(iled=ILEDConfig(beta=-1.0)), "loss.distill.iled.beta"),
        (DistillConfig(iled=ILEDConfig(mining_warmup_steps=-5)), "loss.distill.iled.mining_warmup_steps"),
        (DistillConfig(rpsd=RPSDConfig(bank_size=0)), "loss.distill.rpsd.bank_size"),
        (DistillConfig(rpsd=RPSDConfig(hard_negatives=-1)), "loss.distill.rpsd.hard_negatives"),
        (DistillConfig(rpsd=RPSDConfig(mismatch_k=-1)), "loss.distill.rpsd.mismatch_k"),
        (DistillConfig(rpsd=RPSDConfig(kl_temperature=0.0)), "loss.distill.rpsd.kl_temperature"),
        (DistillConfig(rpsd=RPSDConfig(smooth_l1_beta=-0.01)), "loss.distill.rpsd.smooth_l1_beta"),
        (DistillConfig(rpsd=RPSDConfig(bank_size=32, warmup_entries=33)), "loss.distill.rpsd.warmup_entries"),
        (DistillConfig(rpsd=RPSDConfig(bank_size=32)), "loss.distill.rpsd.hard_negatives"),
        (DistillConfig(rpsd=RPSDConfig(use_bank=False, use_in_batch=False)), "loss.distill.rpsd.use_bank"),
        (DistillConfig(rpsd=RPSDConfig(use_bank=1)), "loss.distill.rpsd.use_bank"),
        (DistillConfig(rpsd=RPSDConfig(bank_size=True)), "loss.distill.rpsd.bank_size"),
        (DistillConfig(rpsd=RPSDConfig(bank_size=8.0)), "loss.distill.rpsd.bank_size"),
        (DistillConfig(rkd=RKDConfig(angle_weight=-50.0)), "loss.distill.rkd.angle_weight"),
        (DistillConfig(iled={"rho": 0.5}), "loss.distill.iled"),
    ],
)
def test_bad_values_name_the_key_path(cfg, key):
    assert _err(cfg).startswith(key)


def test_custom_path_prefix_and_valid_edge_values():
    assert _err(DistillConfig(type="xx"), "recipe.yaml:loss.distill").startswith("recipe.yaml:loss.distill.type")
    DistillConfig(iled=ILEDConfig(rho=1.0), lambda_iled=0, rpsd=RPSDConfig(bank_size=64, use_bank=True)).validate()
    # without a bank, bank_size < warm-up is irrelevant
    DistillConfig(rpsd=RPSDConfig(bank_size=1, use_bank=False)).validate()
