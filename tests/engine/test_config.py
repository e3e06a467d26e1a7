"""Config loading, overrides and error messages (hle/config.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hle.core.decode import DecoderParams
from hle.config import (
    Config,
    ConfigError,
    available_configs,
    config_from_dict,
    config_to_dict,
    load_config,
)


def test_shipped_configs_load_with_the_papers_settings() -> None:
    assert {"cityscapes_r50", "coco_r50", "vistas_r50", "cityscapes_mnv2", "synthetic"} <= set(available_configs())
    cs, coco, vistas = load_config("cityscapes_r50"), load_config("coco_r50"), load_config("vistas_r50")
    # Sec. 4.2: D = 12 / 128 / 128, crops 1024x2048 / 512x512, max side - / 640 / 2048,
    # Adam lr 1e-5 from an ImageNet ResNet-50, poly decay, test-time flip.
    assert (cs.model.embedding_dim, coco.model.embedding_dim, vistas.model.embedding_dim) == (12, 128, 128)
    assert cs.data.crop_size == [1024, 2048] and coco.data.crop_size == [512, 512]
    assert (cs.data.max_side, coco.data.max_side, vistas.data.max_side) == (None, 640, 2048)
    for c in (cs, coco, vistas):
        assert c.optim.lr == 1e-5 and c.model.backbone == "resnet50" and c.model.pretrained == "imagenet"
        assert c.eval.flip and c.data.crop_around_things and c.optim.poly_power > 0
    assert load_config("cityscapes_mnv2").model.backbone == "mobilenet_v2"
    assert load_config("synthetic").model.backbone == "tiny"


def test_overrides_dotted_keys_types_and_mappings() -> None:
    c = load_config(
        "coco_r50",
        [
            "optim.lr=1e-3",  # YAML 1.1 reads this as a string; it must become a float
            "train.steps=7",
            "optim.grad_clip=3",  # int accepted for a float field
            "data.crop_size=[64, 96]",
            "model.pretrained=null",
            "eval.decoder.seed_threshold=0.25",
            "eval.flip=false",
        ],
    )
    assert c.optim.lr == pytest.approx(1e-3) and isinstance(c.optim.lr, float)
    assert c.train.steps == 7 and c.optim.grad_clip == 3.0 and isinstance(c.optim.grad_clip, float)
    assert c.data.crop_size == [64, 96] and c.model.pretrained is None
    assert c.eval.decoder == DecoderParams(seed_threshold=0.25) and c.eval.flip is False


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.stepz=3", "unknown config key 'train.stepz'"),
        ("nope.x=3", "unknown config key 'nope'"),
        ("train.steps=abc", "train.steps: expected int"),
        ("train.steps=1.5", "train.steps: expected int"),
        ("eval.flip=3", "eval.flip: expected bool"),
        ("data.crop_size=5", "data.crop_size: expected list of int or null"),
        ("train.steps.x=1", "config key 'train.steps' has type int and no sub-keys"),
        ("just_a_word", "not of the form key=value"),
    ],
)
def test_bad_overrides_fail_with_one_line_naming_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("synthetic", [override])
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_config_files_by_path_and_their_errors(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("train:\n  steps: 12\nmodel:\n  backbone: tiny\n")
    c = load_config(good, ["train.batch_size=3"])
    assert (c.train.steps, c.train.batch_size, c.model.backbone) == (12, 3, "tiny")
    assert c.optim.lr == Config().optim.lr  # unspecified keys keep the defaults
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown config 'no_such_config'"):
        load_config("no_such_config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(typo)


def test_dict_round_trip_is_lossless() -> None:
    c = load_config("vistas_r50", ["eval.decoder.min_stuff_area=100"])
    assert config_from_dict(config_to_dict(c)) == c


def test_checkpoint_configs_tolerate_removed_keys_but_not_wrong_types() -> None:
    data = config_to_dict(load_config("synthetic"))
    data["eval"]["batch_size"] = 1  # a key an older version had
    with pytest.raises(ConfigError, match="unknown config key 'eval.batch_size'"):
        config_from_dict(data)
    assert config_from_dict(data, strict=False) == load_config("synthetic")
    data["train"]["steps"] = "many"
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        config_from_dict(data, strict=False)
