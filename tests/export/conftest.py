"""Shared fixtures of the export tests: synthetic data, a checkpoint and its ONNX export."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exportfixtures import randomize_batchnorm


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 train / 3 val synthetic images of 64x128."""
    from hle.data import generate_synthetic

    root = tmp_path_factory.mktemp("export_synth")
    generate_synthetic(root, 2, 3, height=64, width=128, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def checkpoint(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the demo's ``tiny`` network (untrained; non-trivial BatchNorms and sigmas).

    Untrained, every pixel is nearest to one class mean; class means taken from the
    network's own embeddings at spread-out pixels give every class some pixels, and
    loose decoder thresholds give many segments to compare.
    """
    from hle.config import config_to_dict, load_config
    from hle.engine.build import build_mapper, build_model, load_records
    from hle.engine.checkpoint import save_checkpoint

    decoder = "{seed_threshold: 0.0, merge_threshold: 0.9, mask_threshold: 0.1, stuff_threshold: 0.0, min_thing_area: 1, min_stuff_area: 1}"
    config = load_config("synthetic", [f"data.root={synth}", "eval.flip=false", f"eval.decoder={decoder}"])
    records, metadata = load_records("synthetic", str(synth), "val")
    torch.manual_seed(0)
    model = build_model(config, metadata.num_classes, pretrained=False).eval()
    randomize_batchnorm(model)
    with torch.no_grad():  # untrained sigma heads are constant (zero weights): make the sigmas vary
        gen = torch.Generator().manual_seed(1)
        for head in (model.sigma_head, model.spatial_sigma_head):
            head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=gen) / head.weight.shape[1] ** 0.5)
    image = build_mapper(config, metadata, train=False)(records[0], index=0)["image"][None]
    with torch.no_grad():
        emb = model(image).embedding[0].flatten(1)
        picks = torch.linspace(0, emb.shape[1] - 1, metadata.num_classes).long()
        model.class_means.copy_(emb[:, picks].T)
        model.class_sigma_raw.add_(0.05 * torch.cos(torch.arange(metadata.num_classes, dtype=torch.float32)))
    path = tmp_path_factory.mktemp("export_ckpt") / "model.pt"
    state = {"model": model.state_dict(), "config": config_to_dict(config), "metadata": metadata.to_dict(), "step": 7}
    return save_checkpoint(state, path)


@pytest.fixture(scope="session")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint exported with ``hle.export.onnx.export_onnx``."""
    pytest.importorskip("onnxruntime")
    from hle.engine.inference import load_trained
    from hle.export.onnx import export_info, export_onnx

    loaded = load_trained(checkpoint)
    return export_onnx(loaded.model, tmp_path_factory.mktemp("export_onnx") / "model.onnx", export_info(loaded))
