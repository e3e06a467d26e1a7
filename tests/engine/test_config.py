"""Config loading, overrides and error messages (hle/config.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Union

import pytest
import yaml

from hle.config import (
    Config,
    ConfigError,
    apply_overrides,
    available_configs,
    check_config,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
)
from hle.core.decode import DecoderParams
from hle.core.hle_loss import HLELossOptions


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
        # typed sub-sections: the decoder's and the loss's own fields, types and ranges
        ("eval.decoder.seed_thresh=0.4", "unknown config key 'eval.decoder.seed_thresh'"),
        ("eval.decoder.seed_threshold=abc", "eval.decoder.seed_threshold: expected float, got 'abc'"),
        ("eval.decoder.min_stuff_area=1.5", "eval.decoder.min_stuff_area: expected int"),
        ("eval.decoder=3", "eval.decoder: expected a mapping"),
        ("loss.options.embedding_loss=lovaz", "loss.options.embedding_loss: expected one of 'lovasz', 'cross_entropy', 'associative'"),
        ("loss.options.ae_instance_margins=[1]", "loss.options.ae_instance_margins: expected [float, float]"),
        ("loss.options.ae_instance_margins=[2, 1]", "loss.options: HLELossOptions.ae_instance_margins must be"),
        ("loss.options.gamma=-1", "loss.options: HLELossOptions.gamma must be >= 0"),
        ("loss.options.stride=4", "loss.options.stride is set by the trainer"),
        ("loss.options.split_embedding=1", "loss.options.split_embedding: expected bool"),
        ("train.max_bad_steps=0", "train.max_bad_steps: expected >= 1"),
        ("train.eval_every=-2", "train.eval_every: expected >= -1"),
        ("train.device=gpu", "train.device: expected one of 'auto', 'cpu', 'cuda'"),
        ("data.val_split=3", "data.val_split: expected str or null"),
        ("data.min_scale=2", "data.min_scale, data.max_scale: expected 0 < min <= max"),
        ("optim.betas=[0.9]", "optim.betas: expected two values"),
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


def test_loss_options_and_decoder_are_typed_with_the_yaml_shape_unchanged(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "loss:\n  options: {gamma: 5, embedding_loss: associative, ae_semantic_margins: [1, 3]}\n"
        "eval:\n  decoder: {seed_threshold: 0.45, min_stuff_area: 64}\n"
    )
    c = load_config(mine, ["eval.decoder.mask_threshold=0.25"])
    assert c.loss.options == HLELossOptions(gamma=5.0, embedding_loss="associative", ae_semantic_margins=(1.0, 3.0))
    assert c.eval.decoder == DecoderParams(seed_threshold=0.45, min_stuff_area=64, mask_threshold=0.25)
    # plain data again for YAML / JSON / checkpoints: tuples as lists, every field written
    data = config_to_dict(c)
    assert data["loss"]["options"]["ae_semantic_margins"] == [1.0, 3.0]
    assert data["eval"]["decoder"]["mask_threshold"] == 0.25
    assert json.loads(json.dumps(data)) == data and config_from_dict(yaml.safe_load(yaml.safe_dump(data))) == c


def test_checkpoint_configs_with_plain_dict_sections_still_load() -> None:
    # What checkpoints written before the typed sections hold: partial dicts, and keys
    # that were accepted then (eval.decoder.split_embedding) and are gone now.
    data = config_to_dict(load_config("synthetic"))
    data["loss"]["options"] = {"gamma": 3}
    data["eval"]["decoder"] = {"seed_threshold": 0.45, "split_embedding": True}
    with pytest.raises(ConfigError, match="unknown config key 'eval.decoder.split_embedding'"):
        config_from_dict(data)
    c = config_from_dict(data, strict=False)
    assert c.loss.options == HLELossOptions(gamma=3.0) and c.eval.decoder == DecoderParams(seed_threshold=0.45)


def test_check_config_sees_values_assigned_in_code() -> None:
    c = load_config("synthetic")
    c.train.steps = 0
    with pytest.raises(ConfigError, match="train.steps: expected >= 1"):
        check_config(c)
    c.train.steps = 5
    c.eval.decoder = {"seed_threshold": "high"}  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="eval.decoder.seed_threshold: expected float"):
        check_config(c)


def test_evaluate_style_overrides_accept_only_the_allowed_sections() -> None:
    data = config_to_dict(load_config("synthetic"))
    ok = apply_overrides(data, parse_overrides(["eval.decoder.seed_threshold=0.3", "eval.flip=false"]), allowed_sections=("eval",))
    assert config_from_dict(ok).eval.decoder.seed_threshold == 0.3 and data["eval"]["flip"] is True  # data untouched
    for item in ("train.steps=4", "model.backbone=resnet50", "data.root=x"):
        with pytest.raises(ConfigError, match=f"'{item.split('=')[0]}'"):
            apply_overrides(data, parse_overrides([item]), allowed_sections=("eval",))
    with pytest.raises(ConfigError, match=r"override 'data.root' does not apply here \(only eval.\*, data.max_side overrides do\)"):
        apply_overrides(data, parse_overrides(["data.root=x"]), allowed_sections=("eval", "data.max_side"))
    assert apply_overrides(data, parse_overrides(["data.max_side=64"]), allowed_sections=("eval", "data.max_side"))["data"]["max_side"] == 64
    with pytest.raises(ConfigError, match="unknown config key 'eval.decoder.nope'"):
        apply_overrides(data, parse_overrides(["eval.decoder.nope=1"]), allowed_sections=("eval",))
    # free-form mappings still take any sub-key
    free = apply_overrides(data, parse_overrides(["model.options.backbone_options.widths=[4, 4, 8, 8]"]))
    assert free["model"]["options"]["backbone_options"]["widths"] == [4, 4, 8, 8]


@pytest.mark.parametrize(
    "tp, value, expected",
    [
        (Literal["a", "b"], "b", "b"),
        (tuple[float, float], [1, 2.5], (1.0, 2.5)),
        (tuple[int, ...], [1, 2, 3], (1, 2, 3)),
        (Union[list[int], None], None, None),
        (Union[int, str], "x", "x"),
    ],
)
def test_coerce_handles_literals_tuples_and_unions(tp: object, value: object, expected: object) -> None:
    from hle.config import _coerce

    out = _coerce(value, tp, "k")
    assert repr(out) == repr(expected)  # values and types, element by element


@pytest.mark.parametrize(
    "tp, value",
    [(Literal["a", "b"], "c"), (Literal[1, 2], True), (tuple[float, float], [1.0, 2.0, 3.0]), (tuple[int, ...], ["x"])],
)
def test_coerce_refuses_what_does_not_fit(tp: object, value: object) -> None:
    from hle.config import _coerce

    with pytest.raises(ConfigError, match="^k: expected"):
        _coerce(value, tp, "k")
