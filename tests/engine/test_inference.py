"""hle/engine/inference.py: running, decoding and evaluating, at full and native resolution."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hle.config import load_config
from hle.core.decode import DecoderParams
from hle.engine.build import build_mapper, build_model, load_records
from hle.engine.inference import cache_outputs, decode_outputs, evaluate_cached, evaluate_records, run_model

# Loose thresholds so an untrained network still yields many segments to compare.
DECODER = DecoderParams(seed_threshold=0.0, merge_threshold=0.9, mask_threshold=0.1, stuff_threshold=0.0,
                        min_thing_area=1, min_stuff_area=1)


@pytest.fixture()
def setup(tiny_synth: Path, overrides):  # noqa: ANN001, ANN201
    """An untrained tiny network, the val records of the tiny dataset and their mapper."""
    config = load_config("synthetic", overrides())
    records, metadata = load_records("synthetic", str(tiny_synth), "val")
    torch.manual_seed(0)
    model = build_model(config, metadata.num_classes, pretrained=False).eval()
    mapper = build_mapper(config, metadata, train=False)
    # Untrained, every pixel is nearest to one class mean. Class means taken from the
    # network's own embeddings at spread-out pixels give every class some pixels.
    with torch.no_grad():
        emb = run_model(model, mapper(records[0], index=0)["image"][None]).embedding[0].flatten(1)
        picks = torch.linspace(0, emb.shape[1] - 1, metadata.num_classes).long()
        model.class_means.copy_(emb[:, picks].T)
    return config, model, records, metadata, mapper


def test_native_outputs_decode_to_an_image_sized_id_map(setup) -> None:  # noqa: ANN001
    config, model, records, metadata, mapper = setup
    image = mapper(records[0], index=0)["image"][None]
    native = run_model(model, image, upsample=False)
    stride = model.decoder_stride
    assert native.embedding.shape[-2:] == (-(-image.shape[-2] // stride), -(-image.shape[-1] // stride))
    result = decode_outputs(model, native, metadata.is_thing, DECODER, image_size=image.shape[-2:])[0]
    assert tuple(result.panoptic.shape) == tuple(image.shape[-2:])
    assert len(result.segments_info) > 1
    ids = {int(i) for i in result.panoptic.unique()} - {0}
    assert ids == {s["id"] for s in result.segments_info}
    for s in result.segments_info:
        assert s["area"] == int((result.panoptic == s["id"]).sum())


@pytest.mark.parametrize("native", [False, True], ids=["full", "native"])
def test_cached_outputs_give_the_metrics_of_a_direct_evaluation(setup, native: bool, monkeypatch) -> None:  # noqa: ANN001
    # evaluate_cached (what a threshold search runs, many times) must score exactly
    # what evaluate_records scores when it runs the network itself, and must leave the
    # caller's model where it is (it decodes cached CPU tensors).
    config, model, records, metadata, mapper = setup
    direct = evaluate_records(model, records, metadata, mapper, decoder_params=DECODER, native=native).metrics
    cache = cache_outputs(model, records, mapper, native=native)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluate_cached moved the caller's model")

    monkeypatch.setattr(model, "cpu", refuse)
    monkeypatch.setattr(model, "to", refuse)
    cached = evaluate_cached(model, cache, metadata, DECODER)
    direct.pop("per_class")
    assert direct["n_images"] == len(records) and direct["mIoU"] > 0
    assert cached == pytest.approx(direct, abs=1e-12)
