"""Tests for hle.core.decode.params: DecoderParams validates every field when built."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hle.core.decode import DOWNSAMPLE_MODES, INSTANCE_SCORES, DecoderParams


def test_defaults_are_valid_frozen_and_hashable() -> None:
    params = DecoderParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed_threshold = 0.1  # type: ignore[misc]
    assert DecoderParams(seed_threshold=1) == DecoderParams(seed_threshold=1.0)
    assert hash(DecoderParams(seed_threshold=1)) == hash(DecoderParams(seed_threshold=1.0))
    assert len({DecoderParams(), DecoderParams(), DecoderParams(downsample=2)}) == 2
    assert dataclasses.replace(params, downsample=4).downsample == 4


def test_numbers_are_normalised_to_the_declared_types() -> None:
    # YAML, NumPy and Optuna hand over ints for floats and NumPy scalars.
    params = DecoderParams(mask_threshold=np.float32(0.25), stuff_threshold=0, min_thing_area=np.int64(8))
    assert type(params.mask_threshold) is float and params.mask_threshold == 0.25
    assert type(params.stuff_threshold) is float
    assert type(params.min_thing_area) is int and params.min_thing_area == 8


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seed_threshold", -0.1, r"seed_threshold must be a number in \[0, 1\], got -0.1 \(float\)"),
        ("merge_threshold", 1.5, r"merge_threshold must be a number in \[0, 1\], got 1.5"),
        ("mask_threshold", "0.5", r"mask_threshold must be a number in \[0, 1\], got '0.5' \(str\)"),
        ("stuff_threshold", float("nan"), r"stuff_threshold must be a number in \[0, 1\], got nan"),
        ("seed_threshold", True, r"seed_threshold must be a number in \[0, 1\], got True \(bool\)"),
        ("min_thing_area", -1, r"min_thing_area must be an integer >= 0, got -1 \(int\)"),
        ("min_stuff_area", 2.5, r"min_stuff_area must be an integer >= 0, got 2.5 \(float\)"),
        ("nms_kernel", 0, r"nms_kernel must be an integer >= 1, got 0"),
        ("nms_kernel", 4, r"nms_kernel must be odd, got 4"),
        ("max_instances", None, r"max_instances must be an integer >= 0, got None \(NoneType\)"),
        ("downsample", 0, r"downsample must be an integer >= 1, got 0"),
        ("downsample", 2.0, r"downsample must be an integer >= 1, got 2.0 \(float\)"),
        ("downsample_mode", "bilinear", r"downsample_mode must be one of \('sample', 'avg'\), got 'bilinear'"),
        ("instance_score", "area", r"instance_score must be one of .*, got 'area' \(str\)"),
    ],
)
def test_bad_field_names_the_field_the_expectation_and_the_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"^DecoderParams\." + message):
        DecoderParams(**{field: value})


def test_every_choice_is_accepted() -> None:
    for mode in DOWNSAMPLE_MODES:
        for score in INSTANCE_SCORES:
            assert DecoderParams(downsample_mode=mode, instance_score=score).instance_score == score


def test_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="seed_thresh"):
        DecoderParams(seed_thresh=0.4)  # type: ignore[call-arg]
