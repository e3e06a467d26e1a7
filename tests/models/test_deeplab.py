"""Tests of hle.models.deeplab: output shapes and ranges, heads' initial values, class
parameters, state-dict round trip, optimiser groups and exportability."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hle.core.thomson import thomson_energy, thomson_init
from hle.core.types import HLEOutputs
from hle.models import HLENet, param_groups
from hle.models.deeplab import inverse_positive, positive


def _check_outputs(out: HLEOutputs, b: int, d: int, h: int, w: int, c: int | None = None) -> None:
    assert out.embedding.shape == (b, d, h, w)
    for t in (out.sigma, out.spatial_sigma, out.seed):
        assert t.shape == (b, 1, h, w)
    norms = out.embedding.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert (out.sigma > 0).all() and (out.spatial_sigma > 0).all()
    assert ((out.seed > 0) & (out.seed < 1)).all()
    if c is None:
        assert out.semantic_logits is None
    else:
        assert out.semantic_logits is not None and out.semantic_logits.shape == (b, c, h, w)


@pytest.mark.parametrize(
    "backbone",
    ["tiny", "mobilenet_v2", "resnet50", "resnet101"],
)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_shapes_and_ranges(backbone: str, output_stride: int) -> None:
    torch.manual_seed(0)
    # Train mode: BatchNorm uses batch statistics. In eval mode an untrained deep ResNet's
    # running statistics (mean 0, var 1) let activations grow so large that the seed sigmoid
    # rounds to exactly 1.0 in float32.
    model = HLENet(backbone, num_classes=4, embedding_dim=6, output_stride=output_stride).train()
    with torch.no_grad():
        _check_outputs(model(torch.randn(2, 3, 64, 64)), 2, 6, 64, 64)
        low = model(torch.randn(2, 3, 64, 64), upsample=False)
    s = model.decoder_stride
    assert s == (2 if backbone == "tiny" else 4)
    _check_outputs(low, 2, 6, 64 // s, 64 // s)


@pytest.mark.parametrize("backbone", ["tiny", "mobilenet_v2", "tiny+skips"])
@pytest.mark.parametrize("size", [(37, 53), (64, 1), (1, 33), (65, 66)])
def test_odd_sizes(backbone: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    h, w = size
    name, _, skips = backbone.partition("+")
    model = HLENet(name, num_classes=3, embedding_dim=4, semantic_branch=True, decoder_skips=bool(skips)).eval()
    with torch.no_grad():
        _check_outputs(model(torch.randn(1, 3, h, w)), 1, 4, h, w, c=3)
        s = model.decoder_stride
        _check_outputs(
            model(torch.randn(1, 3, h, w), upsample=False), 1, 4, -(-h // s), -(-w // s), c=3
        )


@pytest.mark.parametrize("skips", [False, True])
def test_train_mode_backward_reaches_every_parameter(skips: bool) -> None:
    torch.manual_seed(0)
    model = HLENet("tiny", num_classes=3, embedding_dim=4, semantic_branch=True, decoder_skips=skips).train()
    assert len(model.skip_fuse) == (2 if skips else 0)
    out = model(torch.randn(2, 3, 32, 48))
    loss = sum(t.sum() for t in out) + model.class_means.sum() + model.class_sigma().sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_upsampled_outputs_are_activations_of_upsampled_raw_maps() -> None:
    # Independent recomputation: recover the raw head maps from the low-resolution outputs by
    # inverting each activation in closed form, upsample them bilinearly, re-apply.
    torch.manual_seed(0)
    model = HLENet("tiny", num_classes=3, embedding_dim=4, sigma_floor=0.1).eval()
    model.sigma_head.weight.data.normal_(0, 0.5)  # non-constant maps
    x = torch.randn(1, 3, 30, 42)
    with torch.no_grad():
        low, full = model(x, upsample=False), model(x)

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t.double(), size=(30, 42), mode="bilinear", align_corners=False)

    sigma_raw = torch.log(torch.expm1(low.sigma.double() - 0.1))
    assert torch.allclose(full.sigma.double(), 0.1 + F.softplus(up(sigma_raw)), atol=1e-5)
    seed_raw = torch.log(low.seed.double()) - torch.log1p(-low.seed.double())
    assert torch.allclose(full.seed.double(), torch.sigmoid(up(seed_raw)), atol=1e-5)
    # Embeddings: the head's raw low-resolution map, captured by a hook, upsampled and
    # normalised by hand.
    captured = []
    model.embedding_head.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        full = model(x)
    assert torch.allclose(full.embedding.double(), F.normalize(up(captured[0]), dim=1), atol=1e-5)


def test_positive_parametrisation_hand_values() -> None:
    # softplus(0) = log 2; softplus(log(e - 1)) = 1.
    at_zero = float(positive(torch.tensor(0.0), 0.05))
    assert math.isclose(at_zero, 0.05 + math.log(2.0), rel_tol=1e-6)
    assert math.isclose(inverse_positive(1.05, 0.05), math.log(math.e - 1.0), rel_tol=1e-12)
    for value in (0.0501, 0.4, 1.0, 30.0):
        raw = torch.tensor(inverse_positive(value, 0.05), dtype=torch.float64)
        assert math.isclose(float(0.05 + torch.log1p(torch.exp(raw))), value, rel_tol=1e-9)
    with pytest.raises(ValueError, match="must exceed its floor 0.05, got 0.01"):
        inverse_positive(0.01, 0.05)


def test_sigma_heads_start_at_their_init() -> None:
    torch.manual_seed(0)
    model = HLENet(
        "tiny",
        num_classes=5,
        embedding_dim=4,
        sigma_init=0.4,
        spatial_sigma_init=1.0,
        class_sigma_init=0.3,
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 40))
    assert torch.allclose(out.sigma, torch.full_like(out.sigma, 0.4), atol=1e-6)
    assert torch.allclose(out.spatial_sigma, torch.full_like(out.spatial_sigma, 1.0), atol=1e-6)
    assert torch.allclose(model.class_sigma(), torch.full((5,), 0.3), atol=1e-6)
    assert model.class_sigma().shape == (5,)


def test_class_means_thomson_and_random_init() -> None:
    model = HLENet("tiny", num_classes=7, embedding_dim=5, thomson_init=True, seed=3)
    assert isinstance(model.class_means, nn.Parameter)
    assert torch.equal(model.class_means.data, thomson_init(7, 5, seed=3))
    rnd = HLENet("tiny", num_classes=7, embedding_dim=5, thomson_init=False, seed=3)
    norms = rnd.class_means.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones(7), atol=1e-6)
    # Thomson spreads the means: lower energy (Eq. 17) than the random start.
    energy = thomson_energy(model.class_means.detach().double())
    assert energy < thomson_energy(rnd.class_means.detach().double())
    # Seeded, independent of global RNG state.
    torch.manual_seed(123)
    again = HLENet("tiny", num_classes=7, embedding_dim=5, thomson_init=False, seed=3)
    assert torch.equal(again.class_means, rnd.class_means)
    other = HLENet("tiny", num_classes=7, embedding_dim=5, thomson_init=False, seed=4)
    assert not torch.equal(other.class_means, rnd.class_means)


def test_state_dict_round_trip_keeps_class_parameters(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = HLENet("tiny", num_classes=4, embedding_dim=6, seed=1)
    with torch.no_grad():
        model.class_means.add_(0.3)
        model.class_sigma_raw.add_(0.7)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = HLENet("tiny", num_classes=4, embedding_dim=6, seed=2)
    assert not torch.equal(fresh.class_means, model.class_means)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh.class_means, model.class_means)
    assert torch.equal(fresh.class_sigma(), model.class_sigma())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), fresh.eval()(x)):
            assert (a is None and b is None) or torch.equal(a, b)


def test_param_groups() -> None:
    model = HLENet("tiny", num_classes=3, embedding_dim=4)
    groups = param_groups(model, lr=1e-3)
    assert [g["name"] for g in groups] == ["network", "class"]
    assert groups[0]["lr"] == 1e-3 and math.isclose(groups[1]["lr"], 5e-3)
    class_ids = {id(model.class_means), id(model.class_sigma_raw)}
    assert {id(p) for p in groups[1]["params"]} == class_ids
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())
    # Works through a wrapper that prefixes names (as DDP's `module.`) and as a method.
    wrapped = nn.ModuleDict({"module": model})
    assert {id(p) for p in param_groups(wrapped, 1.0, 2.0)[1]["params"]} == class_ids
    assert math.isclose(model.param_groups(lr=1.0, class_lr_mult=2.0)[1]["lr"], 2.0)
    torch.optim.Adam(groups)  # accepted as is
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        param_groups(model, lr=0)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        HLENet("tiny", num_classes=0)
    with pytest.raises(ValueError, match="embedding_dim must be >= 2, got 1"):
        HLENet("tiny", num_classes=3, embedding_dim=1)
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 4"):
        HLENet("tiny", num_classes=3, output_stride=4)
    with pytest.raises(ValueError, match="aspp_rates must be positive ints"):
        HLENet("tiny", num_classes=3, aspp_rates=(0, 2))
    with pytest.raises(ValueError, match="sigma init must exceed its floor"):
        HLENet("tiny", num_classes=3, sigma_init=0.01)
    with pytest.raises(ValueError, match="sigma floor must be >= 0, got -0.1"):
        HLENet("tiny", num_classes=3, spatial_sigma_floor=-0.1)
    with pytest.raises(ValueError, match="decoder_skips: backbone 'mobilenet_v2' offers no intermediate maps"):
        HLENet("mobilenet_v2", num_classes=3, decoder_skips=True)
    model = HLENet("tiny", num_classes=3)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\], got \(1, 1, 8, 8\)"):
        model(torch.zeros(1, 1, 8, 8))


def test_state_dict_keys_of_the_decoder_are_those_of_earlier_checkpoints() -> None:
    # Checkpoints written before decoder_skips existed must still load: the decoder keeps
    # its flat (conv, bn, relu) x 2 layout and the low-level projection its (conv, bn, relu).
    keys = {k for k in HLENet("tiny", num_classes=3).state_dict() if k.startswith(("decoder.", "low_level."))}
    layers = {"decoder.0": "conv", "decoder.1": "bn", "decoder.3": "conv", "decoder.4": "bn",
              "low_level.0": "conv", "low_level.1": "bn"}
    want = set()
    for name, kind in layers.items():
        names = ("weight",) if kind == "conv" else ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        want |= {f"{name}.{n}" for n in names}
    assert keys == want


def test_tiny_model_size() -> None:
    model = HLENet("tiny", num_classes=9, embedding_dim=8)
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 <= n <= 1.5e6


@pytest.mark.parametrize("skips", [False, True])
def test_exports_with_dynamic_shapes(skips: bool) -> None:
    # torch.export refuses data-dependent Python control flow, the same property ONNX export
    # needs; dynamic H and W check that no size is baked in. (The minimum of 32 keeps the
    # stride-16 map larger than 1x1, which export would otherwise specialise on.)
    from torch.export import Dim, export

    torch.manual_seed(0)
    model = HLENet("tiny", num_classes=3, embedding_dim=4, decoder_skips=skips).eval()
    dims = {
        "images": {
            0: Dim("b", min=2, max=16),
            2: Dim("h", min=32, max=2048),
            3: Dim("w", min=32, max=2048),
        }
    }
    program = export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes=dims)
    x = torch.randn(3, 3, 37, 70)
    with torch.no_grad():
        got, ref = program.module()(x), model(x)
    for a, b in zip(got, ref):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)


def test_output_dtypes_under_autocast_and_float64() -> None:
    torch.manual_seed(0)
    model = HLENet("tiny", num_classes=3, embedding_dim=4, semantic_branch=True).eval()
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert all(t.dtype == torch.float32 for t in out)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(1, 32, 40), atol=1e-5)
    with torch.no_grad():
        out64 = model.double()(x.double())
    assert all(t.dtype == torch.float64 for t in out64)


def test_batchnorm_layers_convert_to_sync_batchnorm() -> None:
    model = HLENet("tiny", num_classes=3, semantic_branch=True)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert n_bn > 0
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn
