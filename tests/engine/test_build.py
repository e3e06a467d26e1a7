"""hle/engine/build.py: the decoder's settings from a config."""
from __future__ import annotations

import pytest

from hle.config import ConfigError, load_config
from hle.core.decode import DecoderParams
from hle.engine.build import decoder_params, decoder_split_embedding

# The synthetic config's own decoder section (src/hle/configs/synthetic.yaml).
SYNTHETIC = dict(seed_threshold=0.45, merge_threshold=0.3, mask_threshold=0.3, min_stuff_area=64, min_thing_area=16)


def test_decoder_params_from_the_eval_section() -> None:
    assert decoder_params(load_config("synthetic", [])) == DecoderParams(**SYNTHETIC)
    config = load_config("synthetic", ["eval.decoder.seed_threshold=0.4", "eval.decoder.downsample=2"])
    assert decoder_params(config) == DecoderParams(**{**SYNTHETIC, "seed_threshold": 0.4, "downsample": 2})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.decoder.seed_thresh=0.4", r"unknown config key 'eval\.decoder\.seed_thresh' \(valid: .*seed_threshold"),
        ("eval.decoder.seed_threshold=abc", r"eval\.decoder\.seed_threshold: expected float, got 'abc'"),
        ("eval.decoder.nms_kernel=4", r"eval\.decoder: DecoderParams\.nms_kernel must be odd, got 4"),
        # The split flag is a property of the trained network, not a decoder knob.
        ("eval.decoder.split_embedding=true", r"unknown config key 'eval\.decoder\.split_embedding'"),
    ],
)
def test_bad_decoder_settings_fail_when_the_config_is_loaded(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("synthetic", [override])


def test_split_embedding_follows_the_loss() -> None:
    assert not decoder_split_embedding(load_config("synthetic", []))
    trained_split = load_config("synthetic", ["loss.options.split_embedding=true"])
    assert decoder_split_embedding(trained_split)
    assert decoder_params(trained_split) == DecoderParams(**SYNTHETIC)
