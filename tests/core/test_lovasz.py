"""Tests for hle.core.lovasz against a reference built from the definition.

The reference evaluates the Lovász extension of the Jaccard loss as a set function of
the mispredicted pixels M (Berman et al., Eq. 5 of the paper: the i pixels with the
largest errors are taken as wrong): ``f(M) = 1 - |G - M| / |G + M|`` (set difference
and union) with ``f(empty) = 0``, extended as a Choquet integral ``f_hat(x) = sum_i (x_(i) - x_(i+1)) f({top i pixels})``
with explicit Python sets in float64. That form never uses the sorted-difference weights
of Eq. (5), so it checks them independently.
"""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from hle.core.lovasz import (
    lovasz_binary,
    lovasz_binary_rows,
    lovasz_grad,
    lovasz_hinge,
    lovasz_rows,
    lovasz_softmax,
    lovasz_softmax_rows,
)

from lovasz_reference import jaccard_set_loss, lovasz_reference

D64 = torch.float64


# ----------------------------------------------------------------------------- reference
def reference_rows(errors: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None):
    out = []
    for m in range(errors.shape[0]):
        keep = range(errors.shape[1]) if valid is None else [
            i for i in range(errors.shape[1]) if bool(valid[m, i])]
        out.append(lovasz_reference([float(errors[m, i]) for i in keep],
                                    [bool(labels[m, i]) for i in keep]))
    return torch.tensor(out, dtype=D64)


def reference_softmax(probas, labels, classes, per_image, ignore):
    """Explicit loops over images and classes on [B, C, H, W] probabilities."""
    b, c = probas.shape[:2]
    groups = [(probas[i:i + 1], labels[i:i + 1]) for i in range(b)] if per_image else [(probas, labels)]
    losses = []
    for prob, lab in groups:
        p = prob.permute(0, 2, 3, 1).reshape(-1, c)
        t = lab.reshape(-1)
        keep = [i for i in range(t.numel()) if ignore is None or int(t[i]) != ignore]
        class_ids = range(c) if isinstance(classes, str) else classes
        per_class = []
        for k in class_ids:
            fg = [int(t[i]) == k for i in keep]
            if classes == "present" and not any(fg):
                continue
            err = [abs(float(fg[j]) - float(p[i, k])) for j, i in enumerate(keep)]
            per_class.append(lovasz_reference(err, fg))
        losses.append(sum(per_class) / len(per_class) if per_class else 0.0)
    return sum(losses) / len(losses)


def _errors(m: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(m, p, generator=gen, dtype=D64), torch.rand(m, p, generator=gen) < 0.3


# ----------------------------------------------------------------------------- lovasz_grad
def test_lovasz_grad_matches_prefix_jaccard_differences() -> None:
    for labels in itertools.product([0, 1], repeat=5):
        gt = {i for i, t in enumerate(labels) if t}
        expected = [jaccard_set_loss(set(range(i + 1)), gt) - jaccard_set_loss(set(range(i)), gt)
                    for i in range(5)]
        got = lovasz_grad(torch.tensor(labels, dtype=D64))
        torch.testing.assert_close(got, torch.tensor(expected, dtype=D64), atol=1e-12, rtol=0)


def test_lovasz_grad_batched_rows_and_bool_input() -> None:
    labels = torch.rand(4, 9, generator=torch.Generator().manual_seed(0)) < 0.4
    batched = lovasz_grad(labels)
    assert batched.dtype == torch.float32
    for m in range(4):
        torch.testing.assert_close(batched[m], lovasz_grad(labels[m].double()).float())
    one = lovasz_grad(torch.tensor([1.0]))
    torch.testing.assert_close(one, torch.tensor([1.0]))


def test_lovasz_grad_sums_to_jaccard_of_everything() -> None:
    # Telescoping: sum_i Delta_i = J(every pixel wrong) = 1 (hand-derived identity);
    # and by hand for [0, 1]: first a false positive (J = 1 - 1/2), then the miss (J = 1).
    labels = torch.tensor([0, 1, 1, 0, 0, 1, 0], dtype=D64)
    assert abs(float(lovasz_grad(labels).sum()) - 1.0) < 1e-12
    torch.testing.assert_close(lovasz_grad(torch.tensor([0.0, 1.0], dtype=D64)),
                               torch.tensor([0.5, 0.5], dtype=D64))


# ----------------------------------------------------------------------------- lovasz_rows
@pytest.mark.parametrize("prune", [True, False])
def test_rows_match_reference(prune: bool) -> None:
    errors, labels = _errors(6, 11, seed=1)
    labels[2] = False             # a row without foreground
    labels[3] = True              # a row of foreground only
    got = lovasz_rows(errors, labels, prune=prune)
    torch.testing.assert_close(got, reference_rows(errors, labels, None), atol=1e-6, rtol=0)


def test_rows_pruning_path_is_exact() -> None:
    # Small masks with confident background: most pixels are pruned and rows compacted.
    gen = torch.Generator().manual_seed(2)
    labels = torch.zeros(5, 40, dtype=torch.bool)
    for m in range(5):
        labels[m, 3 * m: 3 * m + 3] = True
    errors = torch.where(labels, 0.3 + 0.7 * torch.rand(5, 40, generator=gen, dtype=D64),
                         0.5 * torch.rand(5, 40, generator=gen, dtype=D64))
    pruned = lovasz_rows(errors, labels, prune=True)
    torch.testing.assert_close(pruned, reference_rows(errors, labels, None), atol=1e-6, rtol=0)
    torch.testing.assert_close(pruned, lovasz_rows(errors, labels, prune=False), atol=1e-12, rtol=0)


@pytest.mark.parametrize("shared", [True, False])
def test_rows_valid_mask(shared: bool) -> None:
    errors, labels = _errors(4, 10, seed=3)
    gen = torch.Generator().manual_seed(4)
    valid = torch.rand(10 if shared else (4, 10), generator=gen) < 0.7
    full = valid.expand(4, 10)
    got = lovasz_rows(errors, labels, valid)
    torch.testing.assert_close(got, reference_rows(errors, labels, full), atol=1e-6, rtol=0)


def test_rows_edge_cases_give_zero_not_nan() -> None:
    errors = torch.rand(3, 5, dtype=D64, requires_grad=True)
    labels = torch.zeros(3, 5, dtype=torch.bool)
    labels[1, 2] = True
    valid = torch.zeros(3, 5, dtype=torch.bool)         # row 0: everything ignored
    valid[1, 2] = True                                  # row 1: a single fg pixel
    valid[2, 4] = True                                  # row 2: a single bg pixel
    out = lovasz_rows(errors, labels, valid)
    expected = torch.stack([torch.zeros((), dtype=D64), errors[1, 2], errors[2, 4]]).detach()
    torch.testing.assert_close(out.detach(), expected)
    out.sum().backward()
    grad = errors.grad
    assert torch.isfinite(grad).all()
    assert grad[0].abs().sum() == 0
    assert float(grad[1, 2]) == 1.0 and float(grad[2, 4]) == 1.0


def test_rows_empty_shapes() -> None:
    assert lovasz_rows(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.bool)).shape == (0,)
    out = lovasz_rows(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool))
    torch.testing.assert_close(out, torch.zeros(2))


def test_rows_binary_input_recovers_set_function() -> None:
    # On an indicator of the mistakes the extension is 1 - IoU of the hard prediction:
    # pred {0, 2, 4} vs gt {0, 1, 4} has IoU 2 / 4 (by hand).
    gt = torch.tensor([[1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    pred = torch.tensor([[1, 0, 1, 0, 1, 0]], dtype=torch.bool)
    errors = (gt != pred).to(D64)
    expected = 0.5
    assert abs(float(lovasz_rows(errors, gt)[0]) - expected) < 1e-12


@pytest.mark.parametrize("prune", [True, False])
def test_rows_gradcheck(prune: bool) -> None:
    labels = torch.zeros(3, 12, dtype=torch.bool)
    labels[0, :2] = True
    labels[1, 5:9] = True
    gen = torch.Generator().manual_seed(5)
    errors = torch.where(labels, 0.4 + 0.6 * torch.rand(3, 12, generator=gen, dtype=D64),
                         0.6 * torch.rand(3, 12, generator=gen, dtype=D64)).requires_grad_()
    valid = torch.ones(12, dtype=torch.bool)
    valid[7] = False
    assert torch.autograd.gradcheck(lambda e: lovasz_rows(e, labels, valid, prune=prune), (errors,))


def test_rows_argument_errors() -> None:
    with pytest.raises(ValueError, match="errors"):
        lovasz_rows(torch.zeros(4), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels"):
        lovasz_rows(torch.zeros(2, 4), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="labels"):
        lovasz_rows(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="valid"):
        lovasz_rows(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.bool),
                    torch.ones(3, 4, dtype=torch.bool))


def test_binary_rows_uses_eq4_errors() -> None:
    gen = torch.Generator().manual_seed(6)
    probas = torch.rand(3, 8, generator=gen, dtype=D64)
    labels = torch.rand(3, 8, generator=gen) < 0.5
    errors = torch.where(labels, 1 - probas, probas)
    torch.testing.assert_close(lovasz_binary_rows(probas, labels),
                               reference_rows(errors, labels, None), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- wrappers
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore", [None, 255])
def test_hinge_matches_reference(per_image: bool, ignore: int | None) -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 4, 5, generator=gen, dtype=D64)
    labels = (torch.rand(3, 4, 5, generator=gen) < 0.4).long()
    if ignore is not None:
        labels[torch.rand(3, 4, 5, generator=gen) < 0.2] = ignore
    labels[2] = 0                                    # an image without foreground

    def ref_image(lg, lb):
        keep = [i for i in range(lb.numel()) if ignore is None or int(lb[i]) != ignore]
        errs = [max(0.0, 1 - float(lg[i]) * (2 * int(lb[i]) - 1)) for i in keep]
        return lovasz_reference(errs, [int(lb[i]) == 1 for i in keep])

    if per_image:
        expected = sum(ref_image(logits[i].reshape(-1), labels[i].reshape(-1)) for i in range(3)) / 3
    else:
        expected = ref_image(logits.reshape(-1), labels.reshape(-1))
    got = lovasz_hinge(logits, labels, per_image=per_image, ignore=ignore)
    assert abs(float(got) - expected) < 1e-6


@pytest.mark.parametrize("per_image", [True, False])
def test_binary_on_probabilities_matches_reference(per_image: bool) -> None:
    gen = torch.Generator().manual_seed(8)
    probas = torch.rand(2, 12, generator=gen, dtype=D64)
    labels = (torch.rand(2, 12, generator=gen) < 0.5).long()
    labels[0, 0] = 255
    errs = torch.where(labels == 1, 1 - probas, probas)
    valid = labels != 255
    if per_image:
        expected = float(reference_rows(errs, labels == 1, valid).mean())
    else:
        expected = float(reference_rows(errs.reshape(1, -1), (labels == 1).reshape(1, -1),
                                        valid.reshape(1, -1))[0])
    got = lovasz_binary(probas, labels, per_image=per_image, ignore=255)
    assert abs(float(got) - expected) < 1e-6


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("classes", ["present", "all", [0, 2]])
@pytest.mark.parametrize("ignore", [None, 255])
def test_softmax_matches_reference(per_image, classes, ignore) -> None:
    gen = torch.Generator().manual_seed(9)
    probas = torch.softmax(torch.randn(2, 4, 3, 5, generator=gen, dtype=D64), dim=1)
    labels = torch.randint(0, 3, (2, 3, 5), generator=gen)  # class 3 is absent everywhere
    labels[1][labels[1] == 0] = 1                           # class 0 absent from image 1
    if ignore is not None:
        labels[torch.rand(2, 3, 5, generator=gen) < 0.25] = ignore
    got = lovasz_softmax(probas, labels, classes=classes, per_image=per_image, ignore=ignore)
    expected = reference_softmax(probas, labels, classes, per_image, ignore)
    assert abs(float(got) - expected) < 1e-6


def test_softmax_single_channel_with_class_list() -> None:
    gen = torch.Generator().manual_seed(10)
    probas = torch.rand(1, 1, 3, 4, generator=gen, dtype=D64)
    labels = torch.randint(0, 2, (1, 3, 4), generator=gen)
    got = lovasz_softmax(probas, labels, classes=[1])
    errs = torch.where(labels == 1, 1 - probas[:, 0], probas[:, 0]).reshape(1, -1)
    assert abs(float(got) - float(reference_rows(errs, (labels == 1).reshape(1, -1), None)[0])) < 1e-9


def test_softmax_all_ignored_and_one_pixel() -> None:
    probas = torch.softmax(torch.randn(2, 3, 2, 2, dtype=D64), dim=1).requires_grad_()
    labels = torch.full((2, 2, 2), 255)
    for per_image in (True, False):
        out = lovasz_softmax(probas, labels, per_image=per_image, ignore=255)
        (grad,) = torch.autograd.grad(out, probas)
        assert float(out.detach()) == 0.0
        assert torch.equal(grad, torch.zeros_like(grad))
    labels[0, 1, 1] = 2                                  # exactly one valid pixel
    out = lovasz_softmax(probas, labels, per_image=False, ignore=255)
    assert abs(float(out.detach()) - (1 - float(probas.detach()[0, 2, 1, 1]))) < 1e-12


def test_softmax_gradcheck() -> None:
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 3, 3, 3, generator=gen, dtype=D64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 3, 3), generator=gen)
    labels[0, 0, 0] = 255
    for per_image in (True, False):
        assert torch.autograd.gradcheck(
            lambda x: lovasz_softmax(torch.softmax(x, 1), labels, per_image=per_image, ignore=255),
            (logits,))


def test_hinge_gradcheck() -> None:
    gen = torch.Generator().manual_seed(12)
    logits = (0.5 * torch.randn(2, 10, generator=gen, dtype=D64)).requires_grad_()
    labels = (torch.rand(2, 10, generator=gen) < 0.5).long()
    for per_image in (True, False):
        assert torch.autograd.gradcheck(
            lambda x: lovasz_hinge(x, labels, per_image=per_image), (logits,))


def test_softmax_rows_groups_equal_per_image() -> None:
    gen = torch.Generator().manual_seed(13)
    probas = torch.softmax(torch.randn(3, 5, 4, 4, generator=gen), dim=1)
    labels = torch.randint(0, 5, (3, 4, 4), generator=gen)
    rows = lovasz_softmax_rows(probas.reshape(3, 5, 16), labels.reshape(3, 16))
    for i in range(3):
        torch.testing.assert_close(rows[i], lovasz_softmax(probas[i:i + 1], labels[i:i + 1]))


def test_large_input_float32_agrees_with_float64() -> None:
    # Precision of the closed-form weights at a realistic number of pixels.
    gen = torch.Generator().manual_seed(14)
    probas = torch.softmax(3 * torch.randn(1, 4, 256, 256, generator=gen, dtype=D64), dim=1)
    labels = torch.randint(0, 4, (1, 256, 256), generator=gen)
    hi = lovasz_softmax(probas, labels)
    lo = lovasz_softmax(probas.float(), labels)
    assert abs(float(hi) - float(lo)) < 1e-5


def test_wrapper_argument_errors() -> None:
    with pytest.raises(ValueError, match="probas"):
        lovasz_softmax(torch.rand(3, 4, 5), torch.zeros(3, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        lovasz_softmax(torch.rand(1, 3, 4, 5), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="classes"):
        lovasz_softmax(torch.rand(1, 3, 4, 5), torch.zeros(1, 4, 5, dtype=torch.long), classes="some")
    with pytest.raises(ValueError, match="classes"):
        lovasz_softmax(torch.rand(1, 3, 4, 5), torch.zeros(1, 4, 5, dtype=torch.long), classes=[3])
    with pytest.raises(ValueError, match="labels"):
        lovasz_hinge(torch.rand(2, 4), torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="scores"):
        lovasz_hinge(torch.rand(2, 4, 4, 4), torch.zeros(2, 4, 4, 4))


def test_random_small_inputs_against_reference() -> None:
    rng = random.Random(15)
    for trial in range(30):
        p = rng.randint(1, 9)
        errs = [rng.random() for _ in range(p)]
        labs = [rng.random() < 0.5 for _ in range(p)]
        got = lovasz_rows(torch.tensor([errs], dtype=D64), torch.tensor([labs]))
        assert abs(float(got[0]) - lovasz_reference(errs, labs)) < 1e-9, trial


@pytest.mark.parametrize("prune", [True, False])
def test_binary_rows_gradcheck_and_invalid_pixels_get_no_gradient(prune: bool) -> None:
    gen = torch.Generator().manual_seed(16)
    labels = torch.zeros(3, 14, dtype=torch.bool)
    labels[0, :3] = True
    labels[1, 6:8] = True                                   # row 2 has no foreground
    probas = torch.where(labels, 0.5 + 0.5 * torch.rand(3, 14, generator=gen, dtype=D64),
                         0.55 * torch.rand(3, 14, generator=gen, dtype=D64)).requires_grad_()
    valid = torch.rand(3, 14, generator=gen) < 0.8
    assert torch.autograd.gradcheck(
        lambda p: lovasz_binary_rows(p, labels, valid, prune=prune), (probas,))
    (grad,) = torch.autograd.grad(lovasz_binary_rows(probas, labels, valid, prune=prune).sum(), probas)
    assert bool((grad[~valid] == 0).all())
    errors = torch.where(labels, 1 - probas, probas).detach()
    torch.testing.assert_close(lovasz_binary_rows(probas, labels, valid, prune=prune).detach(),
                               reference_rows(errors, labels, valid), atol=1e-6, rtol=0)


def test_per_image_mean_counts_fully_ignored_images_as_zero() -> None:
    # Reference semantics: an image without valid pixels contributes a 0 to the mean.
    gen = torch.Generator().manual_seed(17)
    logits = torch.randn(2, 6, generator=gen, dtype=D64)
    labels = (torch.rand(2, 6, generator=gen) < 0.5).long()
    labels[1] = 255
    only_first = lovasz_hinge(logits[:1], labels[:1], per_image=True, ignore=255)
    both = lovasz_hinge(logits, labels, per_image=True, ignore=255)
    assert abs(float(both) - float(only_first) / 2) < 1e-12
    probas = torch.softmax(torch.randn(2, 3, 2, 3, generator=gen, dtype=D64), dim=1)
    sem = torch.randint(0, 3, (2, 2, 3), generator=gen)
    sem[1] = 255
    first = lovasz_softmax(probas[:1], sem[:1], per_image=True, ignore=255)
    assert abs(float(lovasz_softmax(probas, sem, per_image=True, ignore=255)) - float(first) / 2) < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lovasz_grad_half_precision_counts_exactly(dtype: torch.dtype) -> None:
    # Counts beyond 2048 are not representable in half types; the weights must still
    # match the float64 ones to the result dtype's precision.
    labels = torch.rand(6000, generator=torch.Generator().manual_seed(18)) < 0.3
    got = lovasz_grad(labels, dtype).double()
    expected = lovasz_grad(labels, D64)
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-7)
