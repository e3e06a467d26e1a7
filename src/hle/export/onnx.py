"""The network as an ONNX graph, and onnxruntime standing in for it at prediction time.

This module owns ``hle export --format onnx`` and the model behind ``hle predict --onnx``.
:func:`export_onnx` writes the network's forward pass at its decoder stride
(``HLENet(images, upsample=False)``) with dynamic batch, height and width: input
``images [B, 3, H, W]`` (normalised), outputs ``embedding [B, D, h, w]``, ``sigma``,
``spatial_sigma``, ``seed`` ``[B, 1, h, w]`` and, for the separate-branch ablation,
``semantic_logits [B, C, h, w]``, with ``h = ceil(H / decoder_stride)``. The model's
``metadata_props`` carry, as JSON strings under ``hle.*`` keys (:class:`ExportInfo`),
everything else prediction needs: class means and class sigmas (Eq. 9), the dataset's
categories, the decoder thresholds, the decoder stride, the split-embedding flag, the
input normalisation and max side, so the file alone is enough to predict.
:class:`OnnxModel` runs such a file with onnxruntime's CPU provider and offers what the
inference code uses of an :class:`~hle.models.HLENet` (``forward(images,
upsample=False)``, ``class_means``, ``class_sigma()``, ``decoder_stride``);
:func:`load_onnx` wraps it in a :class:`~hle.engine.inference.LoadedModel`, so
``predict_images``, ``evaluate_records``, ``run_model`` (test-time flip included) and
``decode_outputs`` run it unchanged.

Exporter: the ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``). Both
it and the TorchScript-based exporter (``dynamo=False``) export this network, including
torchvision's ASPP (its adaptive average pooling becomes a ``GlobalAveragePool``, its
bilinear resize a ``Resize`` to the runtime size), and onnxruntime reproduces PyTorch
to rounding with either at every input size tried. The dynamo exporter is used because
``torch.export`` reasons about batch, height and width symbolically: a size it would have
to specialise is an error or a refined range (MobileNetV2 at output stride 16 needs
``H, W >= 17``), where tracing bakes Python values in with only a ``TracerWarning``; it
writes each output size as a formula of the input size (``((H - 1) // 4) + 1``), gives
a graph of about half the nodes, and is PyTorch's default while the TorchScript
exporter is deprecated. It costs a slower export (docs/benchmarks.md) and the
``onnxscript`` package.

The graph stops at the decoder stride because the maps are 16x smaller there (stride
4), the upsampling of every channel is skipped, and the decoder decodes them directly
(``decode_panoptic(stride=..., output_size=(H, W))``, i.e. ``eval.native_resolution``).
Upsampling to the image (which the network does on pre-activation maps) is not in the
graph, so :class:`OnnxModel` refuses ``upsample=True``.
"""
from __future__ import annotations

import dataclasses

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hle.core.kernels import DEFAULT_COORD_SCALE
from hle.core.types import HLEOutputs

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "FORMAT_VERSION",
    "ExportInfo",
    "export_info",
    "export_onnx",
    "read_export_info",
    "OnnxModel",
    "load_onnx",
    "max_abs_difference",
    "require",
]

INPUT_NAME = "images"
#: Graph outputs in :class:`HLEOutputs` order; ``semantic_logits`` only when the network has that head.
OUTPUT_NAMES = ("embedding", "sigma", "spatial_sigma", "seed", "semantic_logits")
#: Version of the ``hle.*`` metadata layout; a reader refuses files from a newer layout.
FORMAT_VERSION = 1
DEFAULT_OPSET = 18
_PREFIX = "hle."
_INSTALL = "pip install 'hle[export]'"


def require(module: str) -> Any:
    """Import an optional dependency (``onnx``, ``onnxruntime``, ``onnxscript``) by name.

    Raises:
        ImportError: the package is missing; the message says how to install it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"the optional package '{module}' is not installed ({exc}); ONNX export and onnxruntime "
            f"inference need onnx, onnxruntime and onnxscript: {_INSTALL}"
        ) from None


@dataclass
class ExportInfo:
    """What prediction needs besides the network's maps; stored as ``hle.<field>`` metadata.

    Attributes:
        class_means: ``[C, D]`` float32 persistent class means (Eq. 9), ``model.class_means``.
        class_sigma: ``[C]`` float32 class sigmas, ``model.class_sigma()`` evaluated.
        categories: the dataset metadata, :meth:`hle.data.Metadata.to_dict`.
        decoder: decoder thresholds (``config.eval.decoder``: keyword arguments of
            :func:`hle.core.decode.decode_panoptic`).
        decoder_stride: input pixels per pixel of the output maps.
        split_embedding: decode with the split-embedding ablation.
        mean, std: RGB input normalisation on the 0-1 scale, ``(rgb / 255 - mean) / std``.
        max_side: the longer side is shrunk to at most this before the network
            (``None``: images are used at their size).
        flip: the run's test-time flip default (``eval.flip``).
        coord_scale: coordinate units per input pixel of the spatial kernel (Eq. 8).
        step: training step of the exported checkpoint.
    """

    class_means: torch.Tensor
    class_sigma: torch.Tensor
    categories: dict[str, Any]
    decoder: dict[str, Any] = field(default_factory=dict)
    decoder_stride: int = 4
    split_embedding: bool = False
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    max_side: int | None = None
    flip: bool = False
    coord_scale: float = DEFAULT_COORD_SCALE
    step: int = 0

    def to_props(self) -> dict[str, str]:
        """``{"hle.<field>": JSON}`` for the model's ``metadata_props`` (exact float32 round trip)."""
        values: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "class_means": self.class_means.detach().float().cpu().tolist(),
            "class_sigma": self.class_sigma.detach().float().cpu().tolist(),
            "categories": self.categories,
            "decoder": self.decoder,
            "decoder_stride": int(self.decoder_stride),
            "split_embedding": bool(self.split_embedding),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "max_side": self.max_side,
            "flip": bool(self.flip),
            "coord_scale": float(self.coord_scale),
            "step": int(self.step),
        }
        return {_PREFIX + key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ExportInfo":
        """Parse and check ``hle.*`` metadata (inverse of :meth:`to_props`).

        Raises:
            ValueError: naming ``source`` and the key: not an hle export, a newer
                format, a missing key, or a value of the wrong shape or type.
        """
        if _PREFIX + "format" not in props:
            raise ValueError(
                f"{source} is an ONNX model but not one written by 'hle export' (no '{_PREFIX}format' "
                f"metadata; found keys {sorted(props) or 'none'})"
            )
        values = {k[len(_PREFIX):]: _parse_json(props, k, source) for k in props if k.startswith(_PREFIX)}
        if not isinstance(values["format"], int):
            raise ValueError(f"{source}: {_PREFIX}format must be an integer, got {values['format']!r}")
        if values["format"] > FORMAT_VERSION:
            raise ValueError(
                f"{source}: metadata format {values['format']!r} is newer than this hle reads ({FORMAT_VERSION}); "
                "upgrade hle or export again"
            )
        required = ("class_means", "class_sigma", "categories", "decoder", "decoder_stride")
        missing = [k for k in required if k not in values]
        if missing:
            raise ValueError(f"{source}: hle metadata lacks {', '.join(_PREFIX + k for k in missing)}")
        means = _float_tensor(values["class_means"], 2, f"{source}: {_PREFIX}class_means")
        sigma = _float_tensor(values["class_sigma"], 1, f"{source}: {_PREFIX}class_sigma")
        if sigma.shape[0] != means.shape[0] or not bool((sigma > 0).all()):
            raise ValueError(
                f"{source}: {_PREFIX}class_sigma must be [C] = ({means.shape[0]},) positive values, "
                f"got shape {tuple(sigma.shape)} with minimum {float(sigma.min()):.3g}"
            )
        for key, kind in (("categories", dict), ("decoder", dict), ("decoder_stride", int)):
            if not isinstance(values[key], kind) or isinstance(values[key], bool):
                raise ValueError(f"{source}: {_PREFIX}{key} must be a JSON {kind.__name__}, got {values[key]!r}")
        if values["decoder_stride"] < 1:
            raise ValueError(f"{source}: {_PREFIX}decoder_stride must be >= 1, got {values['decoder_stride']}")
        known = {k: values[k] for k in ("split_embedding", "max_side", "flip", "coord_scale", "step") if k in values}
        try:
            norm = {k: tuple(float(v) for v in values[k]) for k in ("mean", "std") if k in values}
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {_PREFIX}mean and {_PREFIX}std must be lists of 3 numbers") from None
        if any(len(v) != 3 for v in norm.values()):
            raise ValueError(f"{source}: {_PREFIX}mean and {_PREFIX}std must be lists of 3 numbers, got {norm}")
        return cls(means, sigma, values["categories"], values["decoder"], values["decoder_stride"], **known, **norm)


def _parse_json(props: dict[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(props[key])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: metadata '{key}' is not valid JSON ({exc})") from None


def _float_tensor(value: Any, dim: int, what: str) -> torch.Tensor:
    try:
        tensor = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: expected a {dim}-D array of numbers ({exc})") from None
    if tensor.dim() != dim or tensor.numel() == 0 or not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what}: expected a non-empty finite {dim}-D array, got shape {tuple(tensor.shape)}")
    return tensor


def export_info(loaded: Any) -> ExportInfo:
    """The :class:`ExportInfo` of a :class:`~hle.engine.inference.LoadedModel` (checkpoint).

    Reads the run config the way the PyTorch prediction path does: decoder thresholds
    and the split flag from :mod:`hle.engine.build`, the coordinate scale from the loss
    options the network was trained with, normalisation and max side from the
    evaluation mapper.
    """
    from hle.engine.build import build_mapper, decoder_params, decoder_split_embedding

    config, model = loaded.config, loaded.model
    mapper = build_mapper(config, loaded.metadata, train=False)
    return ExportInfo(
        class_means=model.class_means.detach(),
        class_sigma=model.class_sigma().detach(),
        categories=loaded.metadata.to_dict(),
        decoder=dataclasses.asdict(decoder_params(config)),
        decoder_stride=int(model.decoder_stride),
        split_embedding=decoder_split_embedding(config),
        mean=tuple(mapper.mean),
        std=tuple(mapper.std),
        max_side=mapper.max_side,
        flip=bool(config.eval.flip),
        coord_scale=float(config.loss.options.coord_scale),
        step=int(loaded.step),
    )


class _StrideOutputs(nn.Module):
    """``images -> (embedding, sigma, spatial_sigma, seed[, semantic_logits])`` at the decoder stride."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, upsample=False)
        return tuple(t for t in out if t is not None)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    info: ExportInfo,
    *,
    opset: int = DEFAULT_OPSET,
    example_size: tuple[int, int] = (64, 96),
) -> Path:
    """Export ``model`` (an :class:`~hle.models.HLENet`) to ONNX with ``info`` as metadata.

    The graph takes ``images [B, 3, H, W]`` with dynamic ``B, H, W`` and returns the maps
    at the decoder stride (module docstring). The file is self-contained (weights inside,
    no external data file) and written atomically; :func:`onnx.checker.check_model`
    runs on it before it is written.

    Args:
        model: the network; exported in eval mode (the mode is restored afterwards).
        path: destination ``.onnx`` file.
        info: the metadata (:func:`export_info` for a checkpoint).
        opset: ONNX opset of the default domain.
        example_size: ``(H, W)`` of the example input the exporter traces with; any
            size the network accepts, the result does not depend on it.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is not installed.
    """
    from hle.export import write_bytes_atomic

    onnx = require("onnx")
    require("onnxscript")
    names = list(OUTPUT_NAMES[:4]) + (["semantic_logits"] if getattr(model, "semantic_head", None) is not None else [])
    was_training = model.training
    wrapper = _StrideOutputs(model).eval()
    example = torch.randn(2, 3, *example_size, generator=torch.Generator().manual_seed(0))
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    try:
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=names,
            dynamic_shapes={"images": dims}, opset_version=opset, verbose=False,
        )
    finally:
        model.train(was_training)
    proto = program.model_proto
    proto.doc_string = (
        "hle (Hierarchical Lovasz Embeddings) network at its decoder stride; "
        "decoder inputs in the hle.* metadata_props"
    )
    del proto.metadata_props[:]
    for key, value in info.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    return write_bytes_atomic(path, proto.SerializeToString())


def read_export_info(path: str | Path) -> ExportInfo:
    """The :class:`ExportInfo` stored in an ONNX file (needs only ``onnx``, not a session)."""
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends share no useful base
        raise ValueError(f"{path} is not an ONNX model ({_first_line(exc)})") from None
    return ExportInfo.from_props({p.key: p.value for p in proto.metadata_props}, str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OnnxModel(nn.Module):
    """An exported HLE network run by onnxruntime (CPU), in place of an :class:`~hle.models.HLENet`.

    Offers what :mod:`hle.engine.inference` uses of the network: calling it with
    ``images [B, 3, H, W]`` returns :class:`HLEOutputs` at the decoder stride
    (``upsample=False``); ``class_means [C, D]`` (a frozen parameter, so
    ``next(model.parameters()).device`` is the CPU), ``class_sigma() [C]``,
    ``decoder_stride``, ``num_classes``, ``embedding_dim``. Inputs on another device
    are run on the CPU and the outputs moved back.

    Args:
        path: a file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default).

    Attributes:
        info: the file's :class:`ExportInfo`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX model, or not one written by ``hle export`` (message
            names the file and what is wrong).
        ImportError: onnxruntime is not installed.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        ort = require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ValueError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from None
        self.info = ExportInfo.from_props(dict(session.get_modelmeta().custom_metadata_map), str(path))
        self._session = session
        self._outputs = self._check_signature(session, str(path))
        self.class_means = nn.Parameter(self.info.class_means.clone(), requires_grad=False)
        self.register_buffer("_class_sigma", self.info.class_sigma.clone())
        self.decoder_stride = int(self.info.decoder_stride)
        self.num_classes, self.embedding_dim = (int(n) for n in self.class_means.shape)
        self.eval()

    def _check_signature(self, session: Any, source: str) -> list[str]:
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        expected = list(OUTPUT_NAMES[:4])
        if inputs != [INPUT_NAME] or outputs[:4] != expected or outputs[4:] not in ([], ["semantic_logits"]):
            raise ValueError(
                f"{source}: expected input [{INPUT_NAME}] and outputs {expected} (+ semantic_logits), "
                f"got inputs {inputs} and outputs {outputs}"
            )
        return outputs

    def class_sigma(self) -> torch.Tensor:
        """``[C]`` class sigmas of Eq. (9), as stored at export."""
        return self._class_sigma

    def forward(self, images: torch.Tensor, upsample: bool = False) -> HLEOutputs:
        """Run the graph on ``images [B, 3, H, W]``; maps at the decoder stride.

        Raises:
            ValueError: ``upsample=True`` (not in the graph) or a wrong input shape.
        """
        if upsample:
            raise ValueError(
                "an exported hle network returns its maps at the decoder stride only; decode them there "
                "(native resolution, decode_outputs(..., image_size=(H, W))) instead of asking for upsample=True"
            )
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        maps = self._session.run(self._outputs, {INPUT_NAME: array})
        tensors = [torch.from_numpy(m).to(images.device) for m in maps]
        return HLEOutputs(*tensors[:4], semantic_logits=tensors[4] if len(tensors) > 4 else None)


def load_onnx(path: str | Path, *, threads: int | None = None) -> Any:
    """An exported model as a :class:`~hle.engine.inference.LoadedModel` for the prediction code.

    Its ``config`` holds what the file stores (``eval.decoder``, ``eval.flip``,
    ``data.max_side``, the split-embedding flag as ``loss.options.split_embedding``,
    normalisation as ``data.options``, the coordinate scale as ``loss.options.coord_scale``)
    and ``eval.native_resolution=True``, so :mod:`hle.engine.build` gives the decoder
    arguments of the exported checkpoint; its other sections are defaults and mean nothing.

    Raises:
        as :class:`OnnxModel`, and ValueError when the stored categories do not fit the
        class means.
    """
    from hle.config import config_from_dict
    from hle.data.metadata import Metadata
    from hle.engine.inference import LoadedModel

    model = OnnxModel(path, threads=threads)
    info = model.info
    try:
        metadata = Metadata.from_dict(info.categories)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: metadata {_PREFIX}categories is not valid ({_first_line(exc)})") from None
    if metadata.num_classes != model.num_classes:
        raise ValueError(
            f"{path}: {_PREFIX}categories has {metadata.num_classes} classes but {_PREFIX}class_means has {model.num_classes}"
        )
    config = config_from_dict({
        "data": {"max_side": info.max_side, "options": {"mean": list(info.mean), "std": list(info.std)}},
        "loss": {"options": {"split_embedding": info.split_embedding, "coord_scale": info.coord_scale}},
        "eval": {"decoder": dict(info.decoder), "flip": info.flip, "native_resolution": True},
    })
    return LoadedModel(model, config, metadata, info.step)


@torch.no_grad()
def max_abs_difference(reference: nn.Module, candidate: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference per output between two networks at the decoder stride.

    Args:
        reference: e.g. the :class:`~hle.models.HLENet` in eval mode.
        candidate: e.g. the :class:`OnnxModel` exported from it.
        images: ``[B, 3, H, W]`` inputs.

    Returns:
        ``{output name: max |reference - candidate|}`` over the outputs both give.
    """
    ref, got = reference(images, upsample=False), candidate(images, upsample=False)
    if (ref.semantic_logits is None) != (got.semantic_logits is None):
        raise ValueError("max_abs_difference: only one of the two networks has semantic_logits")
    return {
        name: float((a.float() - b.float()).abs().max())
        for name, a, b in zip(OUTPUT_NAMES, ref, got)
        if a is not None and b is not None
    }
