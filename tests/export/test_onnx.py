"""hle/export/onnx.py: ONNX export, onnxruntime inference and the metadata that travels with it."""
from __future__ import annotations

import dataclasses

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from exportfixtures import randomize_batchnorm  # noqa: E402

from hle.engine.build import build_mapper, decoder_params, decoder_split_embedding  # noqa: E402
from hle.engine.inference import decode_outputs, load_trained, run_model  # noqa: E402
from hle.export.onnx import (  # noqa: E402
    ExportInfo,
    OnnxModel,
    export_info,
    export_onnx,
    load_onnx,
    read_export_info,
)
from hle.models import HLENet  # noqa: E402

#: The issue's bound on |onnxruntime - PyTorch| for embedding, sigmas and seed.
AGREEMENT = 1e-4


def _random_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _check_agreement(model: torch.nn.Module, onnx_model: OnnxModel, sizes: list[tuple[int, int, int]]) -> None:
    for i, (batch, height, width) in enumerate(sizes):
        images = _random_images(batch, height, width, seed=i)
        with torch.no_grad():
            ref = model(images, upsample=False)
        got = onnx_model(images)
        stride = model.decoder_stride
        assert got.embedding.shape == (batch, model.embedding_dim, -(-height // stride), -(-width // stride))
        for name in ("embedding", "sigma", "spatial_sigma", "seed", "semantic_logits"):
            a, b = getattr(ref, name), getattr(got, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert b.shape == a.shape and b.dtype == torch.float32, name
                assert float((a - b).abs().max()) <= AGREEMENT, (name, (batch, height, width))


def _standalone_export(model: HLENet, path: Path, num_classes: int) -> OnnxModel:
    categories = {"name": "toy", "categories": [{"id": i + 1, "name": f"c{i}", "isthing": i % 2} for i in range(num_classes)]}
    info = ExportInfo(model.class_means.detach(), model.class_sigma().detach(), categories, decoder_stride=model.decoder_stride)
    return OnnxModel(export_onnx(model, path, info))


# ------------------------------------------------------------------ agreement


def test_tiny_checkpoint_agrees_with_pytorch_at_two_sizes(checkpoint: Path, exported: Path) -> None:
    # Two sizes (one not a multiple of the output stride 16) and two batch sizes on one
    # exported file: the batch, height and width of the graph are dynamic.
    model = load_trained(checkpoint).model
    _check_agreement(model, OnnxModel(exported), [(2, 64, 128), (1, 83, 130)])


@pytest.mark.slow
def test_mobilenet_v2_agrees_with_pytorch_at_two_sizes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HLENet("mobilenet_v2", num_classes=5, embedding_dim=12).eval()
    randomize_batchnorm(model)
    _check_agreement(model, _standalone_export(model, tmp_path / "m.onnx", 5), [(2, 64, 96), (1, 100, 75)])


@pytest.mark.slow
def test_semantic_branch_is_exported_and_agrees(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HLENet("tiny", num_classes=4, embedding_dim=6, semantic_branch=True).eval()
    randomize_batchnorm(model, seed=1)
    # Exported from train mode: the graph must still be the eval-mode network (running
    # BatchNorm statistics, no dropout), and the caller gets the model back in train mode.
    onnx_model = _standalone_export(model.train(), tmp_path / "s.onnx", 4)
    assert model.training
    model.eval()
    assert onnx_model(_random_images(1, 32, 48, 0)).semantic_logits.shape == (1, 4, 16, 24)
    _check_agreement(model, onnx_model, [(1, 40, 56), (2, 64, 64)])


# ------------------------------------------------------------------- decoding


@pytest.mark.parametrize("flip", [False, True], ids=["direct", "flip"])
def test_decoded_results_are_identical_on_synthetic_val_images(checkpoint: Path, exported: Path, synth: Path, flip: bool) -> None:
    from hle.engine.build import load_records

    torch_loaded, onnx_loaded = load_trained(checkpoint), load_onnx(exported)
    records, metadata = load_records("synthetic", str(synth), "val")
    mapper = build_mapper(torch_loaded.config, metadata, train=False)
    params, split = decoder_params(torch_loaded.config), decoder_split_embedding(torch_loaded.config)
    kinds = {True: 0, False: 0}
    for i, record in enumerate(records):
        image = mapper(record, index=i)["image"][None]
        results = [
            decode_outputs(m, run_model(m, image, flip=flip, upsample=False), metadata.is_thing, params,
                           split_embedding=split, image_size=image.shape[-2:])[0]
            for m in (torch_loaded.model, onnx_loaded.model)
        ]
        assert torch.equal(results[0].panoptic, results[1].panoptic)
        assert len(results[0].segments_info) == len(results[1].segments_info)
        for a, b in zip(*(r.segments_info for r in results)):
            assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
            # Scores are means of network outputs: equal to the outputs' rounding.
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        for s in results[0].segments_info:
            kinds[bool(s["isthing"])] += 1
    assert kinds[True] >= 2 * len(records) and kinds[False] >= 2  # many segments of both kinds compared


def test_refuses_upsampled_outputs(exported: Path) -> None:
    with pytest.raises(ValueError, match="decoder stride"):
        OnnxModel(exported)(_random_images(1, 32, 32, 0), upsample=True)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        OnnxModel(exported)(torch.zeros(1, 4, 32, 32))


# ------------------------------------------------------------------- metadata


def test_onnx_checker_passes(exported: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert not list(exported.parent.glob("*.data"))  # one self-contained file
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3] and model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_metadata_round_trips(checkpoint: Path, exported: Path) -> None:
    loaded = load_trained(checkpoint)
    stored = read_export_info(exported)
    # Exact: float32 values written as JSON (repr of the float64 widening) read back bit-equal.
    assert torch.equal(stored.class_means, loaded.model.class_means.detach())
    assert torch.equal(stored.class_sigma, loaded.model.class_sigma().detach())
    assert stored.categories == loaded.metadata.to_dict()
    assert stored.decoder == dataclasses.asdict(loaded.config.eval.decoder) and stored.decoder["seed_threshold"] == 0.0
    assert stored.decoder_stride == loaded.model.decoder_stride == 2
    assert stored.split_embedding is False and stored.step == 7 and stored.flip is False
    assert stored.mean == (0.485, 0.456, 0.406) and stored.std == (0.229, 0.224, 0.225)
    assert stored.max_side == loaded.config.data.max_side
    # The raw props are JSON strings an outside reader can parse without hle.
    props = {p.key: p.value for p in onnx.load(str(exported), load_external_data=False).metadata_props}
    assert json.loads(props["hle.decoder_stride"]) == 2 and len(json.loads(props["hle.class_means"])) == 9
    # What the prediction code reads from an ONNX file equals what it reads from the checkpoint.
    from_onnx = load_onnx(exported)
    assert decoder_params(from_onnx.config) == decoder_params(loaded.config)
    assert decoder_split_embedding(from_onnx.config) == decoder_split_embedding(loaded.config)
    assert from_onnx.config.loss.options.coord_scale == loaded.config.loss.options.coord_scale
    assert from_onnx.metadata.to_dict() == loaded.metadata.to_dict()
    assert from_onnx.config.data.max_side == loaded.config.data.max_side
    assert from_onnx.config.eval.flip == loaded.config.eval.flip and from_onnx.config.eval.native_resolution
    assert from_onnx.model.decoder_stride == 2 and from_onnx.step == 7


@pytest.mark.parametrize("split", [True, False])
def test_split_embedding_decodes_as_the_checkpoint_would(checkpoint: Path, exported: Path, tmp_path: Path, split: bool) -> None:
    # The split flag follows loss.options (how the network was trained); the exported
    # file must give the same decoder arguments either way.
    from hle.config import apply_overrides, config_from_dict, config_to_dict

    loaded = load_trained(checkpoint)
    data = apply_overrides(config_to_dict(loaded.config), [("loss.options.split_embedding", split)])
    loaded.config = config_from_dict(data)
    info = export_info(loaded)
    assert info.split_embedding is split
    path = tmp_path / "m.onnx"
    _with_props(exported, path, info.to_props())
    from_onnx = load_onnx(path).config
    assert decoder_params(from_onnx) == decoder_params(loaded.config)
    assert decoder_split_embedding(from_onnx) is split


def _with_props(source: Path, target: Path, props: dict[str, str]) -> Path:
    model = onnx.load(str(source))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


# --------------------------------------------------------------------- errors


def test_corrupt_file_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 20)
    with pytest.raises(ValueError, match=r"bad\.onnx is not a readable ONNX model"):
        OnnxModel(bad)
    with pytest.raises(ValueError, match=r"bad\.onnx is not an ONNX model"):
        read_export_info(bad)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxModel(tmp_path / "missing.onnx")


def test_foreign_onnx_model_gives_a_clear_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["y"])], "foreign",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ValueError, match=r"foreign\.onnx is an ONNX model but not one written by 'hle export'"):
        load_onnx(path)
    # hle metadata on a graph with other outputs: named as such.
    info = ExportInfo(torch.eye(2), torch.ones(2), {"name": "x", "categories": []})
    with pytest.raises(ValueError, match=r"expected input \[images\] and outputs \['embedding'"):
        load_onnx(_with_props(path, tmp_path / "relabelled.onnx", info.to_props()))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hle.format", "99", "newer than this hle reads"),
        ("hle.class_means", "[1, 2, 3]", "class_means: expected a non-empty finite 2-D array"),
        ("hle.class_sigma", "[1.0]", r"class_sigma must be \[C\] = \(9,\)"),
        ("hle.decoder", "{not json", "'hle.decoder' is not valid JSON"),
        ("hle.decoder_stride", "0", "decoder_stride must be >= 1"),
        ("hle.class_sigma", "[1, 1, 1, 1, 1, 1, 1, 1, -1]", "positive values, got shape \\(9,\\) with minimum -1"),
        ("hle.mean", '"rgb"', "mean and hle.std must be lists of 3 numbers"),
        ("hle.categories", '{"name": "x", "categories": [{"id": 1}]}', "hle.categories is not valid"),
    ],
)
def test_damaged_metadata_is_named(exported: Path, tmp_path: Path, key: str, value: str, message: str) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported), load_external_data=False).metadata_props}
    props[key] = value
    path = _with_props(exported, tmp_path / "damaged.onnx", props)
    with pytest.raises(ValueError, match=message) as info:
        load_onnx(path)
    assert "damaged.onnx" in str(info.value)


def test_missing_onnxruntime_says_how_to_install(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"pip install 'hle\[export\]'"):
        OnnxModel(exported)


def test_runs_inputs_of_any_float_dtype_and_returns_float32(exported: Path) -> None:
    model = OnnxModel(exported)
    images = _random_images(1, 32, 40, 3)
    a, b = model(images), model(images.double())
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4])) and a.embedding.dtype == torch.float32
    assert np.isclose(float(a.embedding.norm(dim=1).mean()), 1.0, atol=1e-5)
