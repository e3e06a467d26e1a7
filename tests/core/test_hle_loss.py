"""Tests for hle.core.hle_loss and hle.losses against brute-force references.

The reference below recomputes every term of Eq. (7)-(16) with explicit Python loops over
images, instances, classes and pixels in float64, straight from the paper's definitions
and docs/design.md (instance mean / sigma / spatial sigma / centre are means over the
instance's pixels), with the Lovász extension evaluated as a Choquet integral of the
Jaccard set loss. It shares no code with the implementation beyond torch arithmetic.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hle.core.hle_loss import (
    LOSS_TERMS,
    HLELossOptions,
    binary_cross_entropy_from_log,
    hle_loss,
)
from hle.core.kernels import grid_instance_log_kernel, instance_kernel, pixel_coordinates
from hle.core.types import HLEOutputs, PanopticTargets
from hle.losses import HLELoss

from lovasz_reference import lovasz_reference

D64 = torch.float64
IS_THING = torch.tensor([False, False, True, True])      # classes 0, 1 stuff; 2, 3 things
C = 4


# ----------------------------------------------------------------------------- reference
def coord(r: int, c: int, stride: float, scale: float) -> tuple[float, float]:
    return (((r + 0.5) * stride - 0.5) * scale, ((c + 0.5) * stride - 0.5) * scale)


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def reference(outputs, targets, class_means, class_sigma, is_thing, stride=1.0,
              scale=1 / 64, gamma=10.0, loss="lovasz", split=False, vq=True):
    emb, sig, ssig, seed = (t.detach().double() for t in outputs[:4])
    b, d, h, w = emb.shape
    ds = d // 2 if split else d
    means = class_means.detach().double()[:, :ds].tolist()
    csig = class_sigma.detach().double().tolist()

    def e_sem(i, r, c):
        v = emb[i, :, r, c].tolist()
        return unit(v[:ds]) if split else v

    def e_ins(i, r, c):
        v = emb[i, :, r, c].tolist()
        return unit(v[ds:]) if split else v

    pixels = [(i, r, c) for i in range(b) for r in range(h) for c in range(w)]
    sem_pix = [q for q in pixels if not bool(targets.ignore[q])]
    ins_pix = [q for q in sem_pix if not bool(targets.crowd[q])]
    label = {q: int(targets.semantic[q]) for q in sem_pix}

    # seg, Eq. (9), (12)
    def psi(q):
        e = e_sem(*q)
        p = [math.exp(-(1 - dot(e, unit(means[k]))) / (2 * csig[k] ** 2)) for k in range(len(means))]
        return [x / sum(p) for x in p]

    present = sorted({label[q] for q in sem_pix})
    probs = {q: psi(q) for q in sem_pix}
    if loss == "lovasz":
        per_class = [lovasz_reference([abs((label[q] == k) - probs[q][k]) for q in sem_pix],
                                    [label[q] == k for q in sem_pix]) for k in present]
        seg = sum(per_class) / len(per_class) if per_class else 0.0
    elif loss == "cross_entropy":
        seg = sum(-math.log(probs[q][label[q]]) for q in sem_pix) / max(len(sem_pix), 1)
    else:
        seg = None

    # seg_mean, Eq. (15)
    seg_mean = 0.0
    if vq and present:
        for k in present:
            members = [e_sem(*q) for q in sem_pix if label[q] == k]
            mb = unit([sum(col) / len(members) for col in zip(*members)])
            seg_mean += sum((a - x) ** 2 for a, x in zip(means[k], mb))
        seg_mean /= len(present)

    # instances, Eq. (8), (10), (11), (13), (14)
    ins_terms, var_sum, var_n, seed_sum, seed_n = [], 0.0, 0, 0.0, 0
    for i in range(b):
        img_pix = [q for q in ins_pix if q[0] == i]
        ids = sorted({int(targets.instance[q]) for q in img_pix} - {0})
        for l in ids:
            members = [q for q in img_pix if int(targets.instance[q]) == l]
            mu = unit([sum(col) / len(members) for col in zip(*[e_ins(*q) for q in members])])
            s_l = sum(float(sig[q[0], 0, q[1], q[2]]) for q in members) / len(members)
            ss_l = sum(float(ssig[q[0], 0, q[1], q[2]]) for q in members) / len(members)
            cs = [coord(q[1], q[2], stride, scale) for q in members]
            centre = (sum(x for x, _ in cs) / len(cs), sum(y for _, y in cs) / len(cs))

            def phi(q):
                rho = coord(q[1], q[2], stride, scale)
                sq = (rho[0] - centre[0]) ** 2 + (rho[1] - centre[1]) ** 2
                return math.exp(-(1 - dot(e_ins(*q), mu)) / (2 * s_l ** 2) - sq / (2 * ss_l ** 2))

            t = [int(targets.instance[q]) == l for q in img_pix]
            p = [phi(q) for q in img_pix]
            if loss == "lovasz":
                ins_terms.append(lovasz_reference([abs(a - x) for a, x in zip(t, p)], t))
            elif loss == "cross_entropy":
                ins_terms.append(sum(-math.log(x) if a else -math.log(1 - x)
                                     for a, x in zip(t, p)) / len(p))
            for q in members:
                var_sum += (float(sig[q[0], 0, q[1], q[2]]) - s_l) ** 2
                seed_sum += (float(seed[q[0], 0, q[1], q[2]]) - phi(q)) ** 2
            var_n += len(members)
            seed_n += len(members)
    for q in ins_pix:
        if not bool(is_thing[label[q]]):
            seed_sum += float(seed[q[0], 0, q[1], q[2]]) ** 2
            seed_n += 1
    return {
        "seg": seg,
        "seg_mean": seg_mean,
        "ins": sum(ins_terms) / len(ins_terms) if ins_terms else 0.0,
        "ins_var": gamma * var_sum / var_n if var_n else 0.0,
        "seed": seed_sum / seed_n if seed_n else 0.0,
    }


# ----------------------------------------------------------------------------- fixtures
def make_batch(b=2, d=4, h=4, w=5, seed=0, dtype=D64, grad=False):
    gen = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(b, d, h, w, generator=gen, dtype=dtype), dim=1)
    sigma = 0.4 + 0.4 * torch.rand(b, 1, h, w, generator=gen, dtype=dtype)
    ssig = 0.05 + 0.1 * torch.rand(b, 1, h, w, generator=gen, dtype=dtype)
    seed_map = 0.05 + 0.9 * torch.rand(b, 1, h, w, generator=gen, dtype=dtype)
    semantic = torch.randint(0, 2, (b, h, w), generator=gen)
    instance = torch.zeros(b, h, w, dtype=torch.long)
    instance[0, 0:2, 0:2], semantic[0, 0:2, 0:2] = 1, 2
    instance[0, 2:4, 3:5], semantic[0, 2:4, 3:5] = 2, 3
    instance[0, 3, 0], semantic[0, 3, 0] = 7, 2                   # a one-pixel instance
    if b > 1:
        instance[1, 1:3, 1:4], semantic[1, 1:3, 1:4] = 1, 3
    crowd = torch.zeros(b, h, w, dtype=torch.bool)
    crowd[0, 0, 4] = True
    semantic[0, 0, 4] = 2                                        # crowd region of a thing class
    ignore = torch.zeros(b, h, w, dtype=torch.bool)
    ignore[0, 1, 2] = True
    if b > 1:
        ignore[1, 3, :] = True
    semantic[ignore] = 255
    thing = IS_THING[semantic.clamp(max=C - 1)] & ~ignore
    cm = torch.randn(C, d, generator=gen, dtype=dtype)
    cs = 0.5 + 0.5 * torch.rand(C, generator=gen, dtype=dtype)
    tensors = [emb, sigma, ssig, seed_map, cm, cs]
    if grad:
        for t in tensors:
            t.requires_grad_()
    outputs = HLEOutputs(emb, sigma, ssig, seed_map)
    targets = PanopticTargets(semantic, instance, thing, ignore, crowd)
    return outputs, targets, cm, cs


def check_against_reference(options: HLELossOptions, terms=LOSS_TERMS, **batch_kwargs) -> None:
    outputs, targets, cm, cs = make_batch(**batch_kwargs)
    got = hle_loss(outputs, targets, cm, cs, IS_THING, options)
    ref = reference(outputs, targets, cm, cs, IS_THING, stride=options.stride,
                    scale=options.coord_scale, gamma=options.gamma, loss=options.embedding_loss,
                    split=options.split_embedding, vq=options.vq_means)
    for name in terms:
        assert abs(float(got[name]) - ref[name]) < 1e-6, (name, float(got[name]), ref[name])


# ----------------------------------------------------------------------------- values
def test_all_terms_match_reference() -> None:
    check_against_reference(HLELossOptions())


def test_total_is_weighted_sum() -> None:
    outputs, targets, cm, cs = make_batch()
    opts = HLELossOptions(seg_weight=0.5, seg_mean_weight=2.0, ins_weight=3.0, seed_weight=0.25)
    out = hle_loss(outputs, targets, cm, cs, IS_THING, opts)
    expected = (0.5 * out["seg"] + 2.0 * out["seg_mean"] + 3.0 * out["ins"] + out["ins_var"]
                + 0.25 * out["seed"])
    torch.testing.assert_close(out["total"], expected)
    assert set(out) == set(LOSS_TERMS) | {"total"}


@pytest.mark.parametrize("stride", [2.0, 4.0])
def test_stride_and_coord_scale(stride: float) -> None:
    check_against_reference(HLELossOptions(stride=stride, coord_scale=1 / 16))


def test_gamma_scales_ins_var() -> None:
    check_against_reference(HLELossOptions(gamma=3.0), terms=("ins_var",))


def test_cross_entropy_variant_matches_reference() -> None:
    check_against_reference(HLELossOptions(embedding_loss="cross_entropy"))


def test_split_embedding_matches_reference() -> None:
    check_against_reference(HLELossOptions(split_embedding=True), d=6)


def test_vq_off_gives_zero_seg_mean() -> None:
    outputs, targets, cm, cs = make_batch(grad=True)
    out = hle_loss(outputs, targets, cm, cs, IS_THING, HLELossOptions(vq_means=False))
    assert float(out["seg_mean"].detach()) == 0.0
    check_against_reference(HLELossOptions(vq_means=False))


def test_seg_per_image_matches_reference() -> None:
    outputs, targets, cm, cs = make_batch()
    out = hle_loss(outputs, targets, cm, cs, IS_THING, HLELossOptions(seg_per_image=True))
    per_image = []
    for i in range(2):
        sub_out = HLEOutputs(*(t[i:i + 1] for t in outputs[:4]))
        sub_t = PanopticTargets(*(t[i:i + 1] for t in targets))
        per_image.append(reference(sub_out, sub_t, cm, cs, IS_THING)["seg"])
    assert abs(float(out["seg"]) - sum(per_image) / 2) < 1e-6


def test_semantic_branch_uses_cross_entropy_on_branch_logits() -> None:
    outputs, targets, cm, cs = make_batch()
    logits = torch.randn(2, C, 4, 5, dtype=D64, generator=torch.Generator().manual_seed(3))
    outputs = outputs._replace(semantic_logits=logits)
    out = hle_loss(outputs, targets, cm, cs, IS_THING, HLELossOptions(semantic_branch=True))
    total, count = 0.0, 0
    for i in range(2):
        for r in range(4):
            for c in range(5):
                if not bool(targets.ignore[i, r, c]):
                    col = logits[i, :, r, c].tolist()
                    lse = math.log(sum(math.exp(x) for x in col))
                    total += lse - col[int(targets.semantic[i, r, c])]
                    count += 1
    assert abs(float(out["seg"]) - total / count) < 1e-9
    assert float(out["seg_mean"]) == 0.0
    ref = reference(outputs, targets, cm, cs, IS_THING)
    for name in ("ins", "ins_var", "seed"):
        assert abs(float(out[name]) - ref[name]) < 1e-6


def _ae_reference(groups: list[list[list[float]]], pull: float, push: float) -> float:
    means = [[sum(col) / len(g) for col in zip(*g)] for g in groups]
    l1 = lambda a, x: sum(abs(p - q) for p, q in zip(a, x))  # noqa: E731
    lp = sum(sum(max(0.0, l1(m, e) - pull) ** 2 for e in g) / len(g)
             for m, g in zip(means, groups)) / len(groups)
    n = len(groups)
    if n < 2:
        return lp
    ls = sum(max(0.0, push - l1(means[a], means[c])) ** 2
             for a in range(n) for c in range(n) if a != c) / (n * (n - 1))
    return lp + ls


def test_associative_variant_matches_eq1_eq2() -> None:
    opts = HLELossOptions(embedding_loss="associative", ae_instance_margins=(0.2, 1.0),
                          ae_semantic_margins=(0.6, 2.5))
    outputs, targets, cm, cs = make_batch()
    out = hle_loss(outputs, targets, cm, cs, IS_THING, opts)
    emb = outputs.embedding
    seg_imgs, ins_imgs = [], []
    for i in range(2):
        pix = [(r, c) for r in range(4) for c in range(5) if not bool(targets.ignore[i, r, c])]
        classes = sorted({int(targets.semantic[i, r, c]) for r, c in pix})
        seg_imgs.append(_ae_reference(
            [[emb[i, :, r, c].tolist() for r, c in pix if int(targets.semantic[i, r, c]) == k]
             for k in classes], 0.6, 2.5))
        ipix = [(r, c) for r, c in pix if not bool(targets.crowd[i, r, c])]
        ids = sorted({int(targets.instance[i, r, c]) for r, c in ipix} - {0})
        if ids:
            ins_imgs.append(_ae_reference(
                [[emb[i, :, r, c].tolist() for r, c in ipix if int(targets.instance[i, r, c]) == l]
                 for l in ids], 0.2, 1.0))
    assert abs(float(out["seg"]) - sum(seg_imgs) / len(seg_imgs)) < 1e-9
    assert abs(float(out["ins"]) - sum(ins_imgs) / len(ins_imgs)) < 1e-9
    ref = reference(outputs, targets, cm, cs, IS_THING)
    for name in ("seg_mean", "ins_var", "seed"):
        assert abs(float(out[name]) - ref[name]) < 1e-6


# ----------------------------------------------------------------------------- gradients
def test_gradcheck_float64() -> None:
    # Terms with a stop-gradient (Eq. 13-15) cannot be checked numerically w.r.t. the
    # inputs behind sg[.]; each term is checked w.r.t. the inputs it differentiates.
    outputs, targets, cm, cs = make_batch(b=1, d=3)
    raw = outputs.embedding.clone()

    def run(emb=raw, sigma=outputs.sigma, ssig=outputs.spatial_sigma, seed_map=outputs.seed,
            means=cm, csig=cs):
        return hle_loss(HLEOutputs(F.normalize(emb, dim=1), sigma, ssig, seed_map), targets,
                        means, csig, IS_THING)

    leaves = [t.clone().requires_grad_() for t in (raw, outputs.sigma, outputs.spatial_sigma, cm, cs)]
    assert torch.autograd.gradcheck(
        lambda e, s, ss, m, c: (lambda o: (o["seg"], o["ins"]))(run(e, s, ss, means=m, csig=c)),
        leaves)
    assert torch.autograd.gradcheck(lambda m: run(means=m)["seg_mean"], (cm.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda s: run(seed_map=s)["seed"],
                                    (outputs.seed.clone().requires_grad_(),))


def test_ins_var_gradient_by_hand() -> None:
    # d/d sigma_i of gamma * mean_i (sigma_i - sg[sigma_hat_l])^2 = 2 gamma (sigma_i - sigma_hat_l) / n
    outputs, targets, cm, cs = make_batch(grad=True)
    out = hle_loss(outputs, targets, cm, cs, IS_THING, HLELossOptions(gamma=3.0))
    (grad,) = torch.autograd.grad(out["ins_var"], outputs.sigma)
    valid = ~targets.ignore & ~targets.crowd & (targets.instance > 0)
    n = int(valid.sum())
    expected = torch.zeros_like(grad)
    sig = outputs.sigma.detach()
    for i in range(2):
        for l in targets.instance[i].unique().tolist():
            members = valid[i] & (targets.instance[i] == l)
            if l == 0 or not bool(members.any()):
                continue
            mean = sig[i, 0][members].mean()
            expected[i, 0][members] = 2 * 3.0 * (sig[i, 0][members] - mean) / n
    torch.testing.assert_close(grad, expected)


def _grads(term: str, options: HLELossOptions = HLELossOptions()) -> dict[str, torch.Tensor | None]:
    outputs, targets, cm, cs = make_batch(grad=True)
    out = hle_loss(outputs, targets, cm, cs, IS_THING, options)
    leaves = {"embedding": outputs.embedding, "sigma": outputs.sigma,
              "spatial_sigma": outputs.spatial_sigma, "seed": outputs.seed,
              "class_means": cm, "class_sigma": cs}
    grads = torch.autograd.grad(out[term], list(leaves.values()), allow_unused=True)
    return {k: (None if g is None or not bool(g.abs().sum() > 0) else g)
            for k, g in zip(leaves, grads)}


def test_seg_mean_gradient_reaches_class_means_only() -> None:
    g = _grads("seg_mean")
    assert g["class_means"] is not None
    assert all(g[k] is None for k in ("embedding", "sigma", "spatial_sigma", "seed", "class_sigma"))


def test_seg_gradient_reaches_embedding_and_class_parameters() -> None:
    g = _grads("seg")
    assert g["embedding"] is not None and g["class_means"] is not None and g["class_sigma"] is not None
    assert g["sigma"] is None and g["seed"] is None


@pytest.mark.parametrize("term", ["ins", "ins_var", "seed"])
def test_instance_terms_do_not_touch_class_parameters(term: str) -> None:
    g = _grads(term)
    assert g["class_means"] is None and g["class_sigma"] is None


def test_seed_and_ins_var_stop_gradients() -> None:
    # Eq. (13)-(14): the seed target sg[phi] and sg[sigma_hat] carry no gradient.
    g = _grads("seed")
    assert g["seed"] is not None
    assert g["embedding"] is None and g["sigma"] is None and g["spatial_sigma"] is None
    g = _grads("ins_var")
    assert g["sigma"] is not None and g["embedding"] is None


def test_ins_gradient_reaches_sigmas() -> None:
    g = _grads("ins")
    assert g["embedding"] is not None and g["sigma"] is not None and g["spatial_sigma"] is not None


# ----------------------------------------------------------------------------- pixel roles
def _perturb(outputs: HLEOutputs, mask: torch.Tensor) -> HLEOutputs:
    gen = torch.Generator().manual_seed(9)
    noise = F.normalize(torch.randn(outputs.embedding.shape, generator=gen, dtype=D64), dim=1)
    emb = torch.where(mask[:, None], noise, outputs.embedding)
    fields = [torch.where(mask[:, None], 0.5 * torch.ones_like(t), t) for t in outputs[1:4]]
    return HLEOutputs(emb, *fields)


def test_void_pixels_take_part_in_nothing() -> None:
    outputs, targets, cm, cs = make_batch()
    base = hle_loss(outputs, targets, cm, cs, IS_THING)
    changed = hle_loss(_perturb(outputs, targets.ignore), targets, cm, cs, IS_THING)
    for name in LOSS_TERMS:
        assert abs(float(base[name]) - float(changed[name])) < 1e-12, name


def test_crowd_pixels_take_part_in_semantic_terms_only() -> None:
    outputs, targets, cm, cs = make_batch()
    base = hle_loss(outputs, targets, cm, cs, IS_THING)
    changed = hle_loss(_perturb(outputs, targets.crowd), targets, cm, cs, IS_THING)
    for name in ("ins", "ins_var", "seed"):
        assert abs(float(base[name]) - float(changed[name])) < 1e-12, name
    assert abs(float(base["seg"]) - float(changed["seg"])) > 1e-6
    assert abs(float(base["seg_mean"]) - float(changed["seg_mean"])) > 1e-6


# ----------------------------------------------------------------------------- edge cases
def _finite_zero_grads(outputs, targets, cm, cs, zero_terms):
    out = hle_loss(outputs, targets, cm, cs, IS_THING)
    for name in zero_terms:
        assert float(out[name].detach()) == 0.0, name
    leaves = [outputs.embedding, outputs.sigma, outputs.spatial_sigma, outputs.seed, cm, cs]
    for name in LOSS_TERMS + ("total",):
        grads = torch.autograd.grad(out[name], leaves, allow_unused=True, retain_graph=True)
        for g in grads:
            assert g is None or bool(torch.isfinite(g).all()), name
            if name in zero_terms and g is not None:
                assert bool((g == 0).all()), name
    assert bool(torch.isfinite(out["total"]))
    return out


def test_image_without_instances() -> None:
    outputs, targets, cm, cs = make_batch(grad=True)
    targets = targets._replace(instance=torch.zeros_like(targets.instance))
    _finite_zero_grads(outputs, targets, cm, cs, ("ins", "ins_var"))


def test_all_ignored_crop() -> None:
    outputs, targets, cm, cs = make_batch(grad=True)
    ignore = torch.ones_like(targets.ignore)
    targets = targets._replace(ignore=ignore, semantic=torch.full_like(targets.semantic, 255))
    _finite_zero_grads(outputs, targets, cm, cs, LOSS_TERMS)


def test_single_one_pixel_instance() -> None:
    outputs, targets, cm, cs = make_batch(b=1, grad=True)
    instance = torch.zeros_like(targets.instance)
    instance[0, 3, 0] = 7
    out = _finite_zero_grads(outputs, targets._replace(instance=instance), cm, cs, ("ins_var",))
    ref = reference(outputs, targets._replace(instance=instance), cm, cs, IS_THING)
    for name in LOSS_TERMS:
        assert abs(float(out[name].detach()) - ref[name]) < 1e-6, name


def test_float32_runs_and_matches_float64() -> None:
    outputs, targets, cm, cs = make_batch()
    f32 = hle_loss(HLEOutputs(*(t.float() for t in outputs[:4])), targets, cm.float(), cs.float(),
                   IS_THING)
    f64 = hle_loss(outputs, targets, cm, cs, IS_THING)
    for name in LOSS_TERMS:
        assert f32[name].dtype == torch.float32
        assert abs(float(f32[name]) - float(f64[name])) < 1e-4, name


# ----------------------------------------------------------------------------- module + checks
def test_module_equals_function() -> None:
    outputs, targets, cm, cs = make_batch()
    opts = HLELossOptions(gamma=5.0)
    module = HLELoss(IS_THING.tolist(), opts)
    a = module(outputs, targets, cm, cs)
    b = hle_loss(outputs, targets, cm, cs, IS_THING, opts)
    for name in a:
        assert torch.equal(a[name], b[name])
    assert list(module.parameters()) == []
    assert "is_thing" not in module.state_dict()


@pytest.mark.parametrize("mutate,word", [
    (lambda o, t, m, s, i: (o._replace(embedding=o.embedding[0]), t, m, s, i), "embedding"),
    (lambda o, t, m, s, i: (o._replace(sigma=o.sigma[:, :, :2]), t, m, s, i), "sigma"),
    (lambda o, t, m, s, i: (o._replace(seed=o.seed[:1]), t, m, s, i), "seed"),
    (lambda o, t, m, s, i: (o, t._replace(semantic=t.semantic[:, :2]), m, s, i), "semantic"),
    (lambda o, t, m, s, i: (o, t._replace(ignore=t.ignore.long()), m, s, i), "ignore"),
    (lambda o, t, m, s, i: (o, t._replace(instance=t.instance.double()), m, s, i), "instance"),
    (lambda o, t, m, s, i: (o, t, m[:, :2], s, i), "class_means"),
    (lambda o, t, m, s, i: (o, t, m, s[:2], i), "class_sigma"),
    (lambda o, t, m, s, i: (o, t, m, s, i.long()), "is_thing"),
    (lambda o, t, m, s, i: (o, t._replace(semantic=t.semantic.masked_fill(~t.ignore, 9)), m, s, i),
     "semantic"),
])
def test_wrong_inputs_name_the_argument(mutate, word) -> None:
    outputs, targets, cm, cs = make_batch()
    args = mutate(outputs, targets, cm, cs, IS_THING)
    with pytest.raises((ValueError, TypeError), match=word):
        hle_loss(*args)


def test_option_checks() -> None:
    outputs, targets, cm, cs = make_batch()
    with pytest.raises(ValueError, match="semantic_logits"):
        hle_loss(outputs, targets, cm, cs, IS_THING, HLELossOptions(semantic_branch=True))
    with pytest.raises(ValueError, match="split_embedding"):
        hle_loss(outputs._replace(embedding=outputs.embedding[:, :3]), targets, cm[:, :3], cs,
                 IS_THING, HLELossOptions(split_embedding=True))
    with pytest.raises(ValueError, match="embedding_loss"):
        HLELossOptions(embedding_loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stride"):
        HLELossOptions(stride=0)
    with pytest.raises(ValueError, match="ae_instance_margins"):
        HLELossOptions(ae_instance_margins=(2.0, 1.0))
    assert HLELossOptions(ae_semantic_margins=[1, 2]).ae_semantic_margins == (1.0, 2.0)
    with pytest.raises(ValueError, match="is_thing"):
        HLELoss(torch.zeros(2, 2, dtype=torch.bool))


# ------------------------------------------------------------ documented ranges under rounding
@pytest.fixture
def cpu_mode(request):
    """Run with ``(threads, flush_denormal)`` from the test's parameters, then restore."""
    threads, flush = request.param
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flush)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(old_threads)


def rounding_batch(dtype: torch.dtype) -> tuple:
    """A batch that puts phi at a rounding error above 1 on any CPU.

    Every thing pixel is its own instance, so the instance mean *is* the pixel's
    embedding and the spatial term is exactly 0 at it; the embeddings are a few ulps
    longer than unit (as ``F.normalize`` can leave them), so ``mu_hat . e = |e| > 1``
    whatever the BLAS kernel; sigmas sit at the network's floor, which multiplies the
    excess by ``1 / (2 * 0.05^2) = 200``.
    """
    gen = torch.Generator().manual_seed(5)
    b, d, h, w = 2, 6, 3, 4
    emb = F.normalize(torch.randn(b, d, h, w, generator=gen, dtype=dtype), dim=1)
    emb = emb * (1.0 + 8 * torch.finfo(dtype).eps)
    floor = torch.full((b, 1, h, w), 0.05, dtype=dtype)
    seed_map = torch.full((b, 1, h, w), 0.5, dtype=dtype)
    semantic = torch.randint(0, 2, (b, h, w), generator=gen)
    semantic[:, 1:, 1:3] = 2                                    # 2 x 2 thing pixels per image
    instance = torch.zeros(b, h, w, dtype=torch.long)
    instance[:, 1:, 1:3] = torch.arange(1, 5).view(2, 2)
    none = torch.zeros(b, h, w, dtype=torch.bool)
    targets = PanopticTargets(semantic, instance, IS_THING[semantic], none, none.clone())
    cm = torch.randn(C, d, generator=gen, dtype=dtype)
    cs = torch.full((C,), 0.05, dtype=dtype)
    outputs = HLEOutputs(emb.requires_grad_(), floor.clone().requires_grad_(), floor.clone().requires_grad_(), seed_map)
    return outputs, targets, cm.requires_grad_(), cs


@pytest.mark.parametrize("cpu_mode", [(1, False), (2, False), (1, True), (2, True)], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("embedding_loss", ["lovasz", "cross_entropy"])
def test_kernel_rounded_above_one_stays_in_range(cpu_mode, dtype, embedding_loss) -> None:
    outputs, targets, cm, cs = rounding_batch(dtype)
    emb = outputs.embedding[0].detach().flatten(1).T                       # [N, D]
    inst = targets.instance[0].flatten()
    pix = torch.nonzero(inst > 0).squeeze(1)
    coords = pixel_coordinates(3, 4, dtype=dtype)
    sig = torch.full((pix.numel(),), 0.05, dtype=dtype)
    # The unguarded arithmetic does exceed 1 on this input (so the test exercises the guard).
    assert float((F.normalize(emb[pix], dim=1) * emb[pix]).sum(1).max()) > 1.0
    log_phi = grid_instance_log_kernel(emb, coords[::4, 0], coords[:4, 1], emb[pix], sig, coords[pix], sig)
    assert float(log_phi.max()) <= 0.0
    # Each instance scores exactly 1 at its own (only) pixel, and <= 1 everywhere.
    assert torch.equal(log_phi.exp()[torch.arange(pix.numel()), pix], torch.ones(pix.numel(), dtype=dtype))
    phi = instance_kernel(emb, coords, emb[pix], sig, coords[pix], sig)
    assert float(phi.max()) <= 1.0 and float(phi.min()) >= 0.0
    out = hle_loss(outputs, targets, cm, cs, IS_THING, HLELossOptions(embedding_loss=embedding_loss))
    assert all(math.isfinite(float(out[k].detach())) for k in out)
    out["total"].backward()
    for t in (outputs.embedding, outputs.sigma, outputs.spatial_sigma, cm):
        assert torch.isfinite(t.grad).all()


def test_bce_from_log_matches_torch_and_stays_finite() -> None:
    log_p = torch.linspace(-30.0, -1e-6, 101, dtype=D64)
    for target in (0.0, 1.0):
        t = torch.full_like(log_p, target)
        want = F.binary_cross_entropy(log_p.exp(), t, reduction="none")
        got = binary_cross_entropy_from_log(log_p, t)
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    # Where torch clamps its logs at -100, so does the log form; p = 1 (log_p = 0) and
    # rounding above it give the clamped 100 for a negative, 0 for a positive.
    edge = torch.tensor([0.0, 1e-7, -500.0], dtype=D64, requires_grad=True)
    got = binary_cross_entropy_from_log(edge, torch.tensor([0.0, 0.0, 1.0], dtype=D64))
    assert got.tolist() == [100.0, 100.0, 100.0]
    got.sum().backward()
    assert torch.isfinite(edge.grad).all()
    # Near p = 0 the log form keeps the exact -log(1 - p) ~ p where 1 - p rounds to 1.
    tiny = torch.tensor([-40.0])
    assert binary_cross_entropy_from_log(tiny, torch.zeros(1)).item() == pytest.approx(math.exp(-40.0), rel=1e-6)
