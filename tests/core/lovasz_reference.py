"""Independent reference for the Lovász tests: the Lovász extension of the Jaccard loss.

Written from the definition with Python sets (Choquet-integral form), not from the code
under test; shared by tests/core/test_lovasz.py and tests/core/test_hle_loss.py.
"""
from __future__ import annotations


def jaccard_set_loss(mistakes: set[int], gt: set[int]) -> float:
    """Jaccard loss 1 - IoU when exactly the pixels in ``mistakes`` are predicted wrong."""
    if not mistakes:
        return 0.0
    return 1.0 - len(gt - mistakes) / len(gt | mistakes)


def lovasz_reference(errors: list[float], labels: list[bool]) -> float:
    """Choquet-integral form of the Lovász extension of the Jaccard loss."""
    if not errors:
        return 0.0
    gt = {i for i, t in enumerate(labels) if t}
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    values = [errors[i] for i in order] + [0.0]
    total = 0.0
    for i in range(len(order)):
        total += (values[i] - values[i + 1]) * jaccard_set_loss(set(order[: i + 1]), gt)
    return total
