"""The decoder's knobs, declared once: :class:`DecoderParams`, validated when built.

The config, the CLI, threshold searches and :func:`hle.core.decode.decode_panoptic` all
take this one frozen value; nothing else lists or re-checks its fields.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

#: How :class:`DecoderParams.downsample` reduces the maps.
DOWNSAMPLE_MODES = ("sample", "avg")

#: How an instance is scored (for AP and for ranking): the seed score s_i, the
#: mean Phi(seed, pixel) over its mask, or their product.
INSTANCE_SCORES = ("seed", "mean_phi", "seed_mean_phi")

#: Pixels per chunk of the pixel-major semantic and instance matmuls: large enough
#: to amortise the BLAS call, small enough that a ``[chunk, C]`` block stays in cache.
DEFAULT_CHUNK = 32768

_PROBABILITIES = ("seed_threshold", "merge_threshold", "mask_threshold", "stuff_threshold")
_MINIMUM = {"min_thing_area": 0, "min_stuff_area": 0, "nms_kernel": 1, "max_instances": 0, "downsample": 1}
_CHOICES = {"downsample_mode": DOWNSAMPLE_MODES, "instance_score": INSTANCE_SCORES}


@dataclass(frozen=True)
class DecoderParams:
    """Thresholds and switches of the panoptic decoder (Sec. 3.5, Supplementary C).

    A frozen, hashable value, validated when built, so a threshold search can build,
    log and pass a whole setting around (``dataclasses.replace(params, ...)``).

    Attributes:
        seed_threshold: a local maximum of the seed map becomes a candidate seed
            when its score is above this. Seeds regress Phi (Eq. 13), whose
            training decision boundary is 0.5. In ``[0, 1]``.
        merge_threshold: a seed is merged into (dropped in favour of) a stronger
            kept seed when Phi(stronger, weaker) is above this. In ``[0, 1]``.
        mask_threshold: a thing pixel joins an instance when Phi(seed, pixel) is
            above this (0.5 is the boundary the Lovász hinge of Eq. 11 trains). In ``[0, 1]``.
        stuff_threshold: a stuff pixel whose largest psi (Eq. 9) is below this
            becomes void. In ``[0, 1]``.
        min_thing_area: instances smaller than this (in output pixels) become void. ``>= 0``.
        min_stuff_area: stuff segments smaller than this (in output pixels) become void. ``>= 0``.
        nms_kernel: odd side of the square neighbourhood for the seed NMS (3 = the
            paper's 3x3 max pooling). ``>= 1``.
        max_instances: at most this many candidate seeds (the highest scores)
            enter merging, hence at most this many instances per image. ``>= 0``.
        downsample: decode on maps ``downsample`` times smaller (Supplementary C). ``>= 1``.
        downsample_mode: one of :data:`DOWNSAMPLE_MODES`: ``"sample"`` (the centre
            pixel of each block: reads only every f-th row of the full maps) or
            ``"avg"`` (average-pool, re-normalise: a full pass over the embedding).
        instance_score: one of :data:`INSTANCE_SCORES`; stuff is always scored by
            its mean max psi.

    Raises:
        ValueError: naming the field, what it must be and what was given.
    """

    seed_threshold: float = 0.5
    merge_threshold: float = 0.5
    mask_threshold: float = 0.5
    stuff_threshold: float = 0.3
    min_thing_area: int = 16
    min_stuff_area: int = 512
    nms_kernel: int = 3
    max_instances: int = 512
    downsample: int = 1
    downsample_mode: str = "sample"
    instance_score: str = "seed"

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"DecoderParams.{name} must be a number in [0, 1], got {_show(value)}")
            object.__setattr__(self, name, float(value))  # one type, so equal settings hash alike
        for name, low in _MINIMUM.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
                raise ValueError(f"DecoderParams.{name} must be an integer >= {low}, got {_show(value)}")
            object.__setattr__(self, name, int(value))
        if self.nms_kernel % 2 == 0:
            raise ValueError(f"DecoderParams.nms_kernel must be odd, got {self.nms_kernel}")
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"DecoderParams.{name} must be one of {choices}, got {_show(value)}")


def _show(value: object) -> str:
    """``repr`` plus the type, so ``'0.5'`` (a string) is told apart from ``0.5``."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value!r} ({type(value).__name__})"
