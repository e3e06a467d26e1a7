"""Typed run configuration: dataclasses, YAML loading and ``key=value`` overrides.

This module owns the one place where YAML becomes Python: :func:`load_config` reads a
named package config (``hle/configs/<name>.yaml``) or a file path, applies dotted
``section.key=value`` overrides, and checks every value against the dataclass field's
type, so a typo fails at start-up with one line naming the key and the type expected.
Sections are dataclasses all the way down: ``loss.options`` is
:class:`hle.core.hle_loss.HLELossOptions` and ``eval.decoder`` is
:class:`hle.core.decode.DecoderParams`, so their keys, types and ranges (each class's
``__post_init__``) are checked when the config is loaded, before anything runs. Only the
CLI calls :func:`load_config`; library code takes plain keyword arguments (the engine
reads the sections it needs). The defaults are the paper's Cityscapes
settings (Sec. 4.2) where the paper gives one; the demo's from-scratch settings live in
``synthetic.yaml``.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import yaml

from hle.core.decode import DecoderParams
from hle.core.hle_loss import HLELossOptions

__all__ = [
    "ConfigError",
    "ModelConfig",
    "LossConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "check_config",
    "available_configs",
]


class ConfigError(ValueError):
    """A user mistake in a config file or override (unknown key, wrong type, missing file)."""


@dataclass
class ModelConfig:
    """Network settings (Sec. 3.4; DeepLabV3+ over a torchvision backbone).

    Attributes:
        backbone: ``resnet50``, ``resnet101``, ``mobilenet_v2`` or ``tiny`` (demo).
        embedding_dim: D of the unit embedding (paper: 12 Cityscapes, 128 COCO/Vistas).
        output_stride: backbone output stride (16 or 8).
        pretrained: ``None``, ``"imagenet"`` (torchvision weights) or a checkpoint path.
        upsample: return outputs at input resolution; ``False`` keeps the decoder stride
            (the loss is then computed at reduced resolution against subsampled targets).
        thomson_init: initialise class means by Eq. (17).
        width: channel width multiplier / base width for the ``tiny`` backbone.
        options: further keyword arguments passed to the model constructor verbatim.
    """

    backbone: str = "resnet50"
    embedding_dim: int = 12
    output_stride: int = 16
    pretrained: Union[str, None] = "imagenet"
    upsample: bool = True
    thomson_init: bool = True
    options: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    """HLE loss settings (Eq. 11-16).

    The resolution of the loss follows ``model.upsample``: at full resolution when
    true, else at the network's decoder stride against nearest-subsampled targets.

    Attributes:
        options: the loss switches and weights (YAML: ``options: {gamma: 10}``; keys,
            types and ranges checked at load time). ``stride`` is not a setting: the
            trainer sets it from the model, so a value other than 1 is refused.
    """

    options: HLELossOptions = field(default_factory=HLELossOptions)

    def __post_init__(self) -> None:
        stride = getattr(self.options, "stride", 1.0)  # a mapping assigned in code is checked by check_config
        if stride != 1.0:
            raise ConfigError(
                "loss.options.stride is set by the trainer from model.upsample (the network's "
                f"stride); remove it from the config (got {stride})"
            )


@dataclass
class DataConfig:
    """Dataset and augmentation settings.

    Attributes:
        name: dataset loader name (``synthetic``, ``cityscapes``, ``coco``, ``vistas``,
            ``coco_panoptic`` for a custom dataset in COCO panoptic layout).
        root: dataset root folder.
        train_split: split name passed to the loader.
        val_split: validation split (``null``: train without evaluation and without
            ``best.pt``). A split that does not load stops ``train`` at start-up unless
            evaluation is off (``train.eval_every=-1``).
        crop_size: ``[height, width]`` of training crops (paper: 1024x2048 Cityscapes,
            512x512 COCO); ``None`` trains on whole (resized) images.
        max_side: resize so the longer side is at most this (paper: COCO 640, Vistas
            2048); ``None`` keeps the native size.
        min_scale, max_scale: random scale range of the training augmentation.
        crop_around_things: centre crops on thing pixels (Sec. 4.2).
        flip: random horizontal flip while training.
        jitter: random brightness / contrast / saturation.
        num_workers: DataLoader worker processes.
        options: further keyword arguments for the per-sample mapper, verbatim.
    """

    name: str = "cityscapes"
    root: str = "datasets/cityscapes"
    train_split: str = "train"
    val_split: Union[str, None] = "val"
    crop_size: Union[list[int], None] = field(default_factory=lambda: [1024, 2048])
    max_side: Union[int, None] = None
    min_scale: float = 0.5
    max_scale: float = 2.0
    crop_around_things: bool = True
    flip: bool = True
    jitter: bool = True
    num_workers: int = 2
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            raise ConfigError(f"data.crop_size: expected [height, width] >= 1 or null, got {self.crop_size}")
        if self.max_side is not None and self.max_side < 1:
            raise ConfigError(f"data.max_side: expected >= 1 or null, got {self.max_side}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(
                f"data.min_scale, data.max_scale: expected 0 < min <= max, got {self.min_scale}, {self.max_scale}"
            )
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: expected >= 0, got {self.num_workers}")


@dataclass
class OptimConfig:
    """Adam with polynomial decay (Sec. 4.2: Adam, lr 1e-5, poly decay).

    Attributes:
        lr: base learning rate of the network (paper: 1e-5 from an ImageNet backbone).
        class_lr_mult: multiplier for the class means and class sigmas; they are
            learned slowly by back-propagation otherwise (Sec. 3.4 discussion of Eq. 15).
        weight_decay: L2 weight decay of Adam.
        betas: Adam betas.
        poly_power: exponent of ``(1 - progress) ** power``.
        warmup_steps: linear warm-up from 0 at the start.
        min_lr_ratio: floor of the decayed lr as a fraction of the base lr.
        grad_clip: clip the global gradient norm to this (``0`` disables).
    """

    lr: float = 1e-5
    class_lr_mult: float = 5.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    poly_power: float = 0.9
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 10.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr: expected > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two values in [0, 1), got {self.betas}")
        for name in ("class_lr_mult", "weight_decay", "poly_power", "warmup_steps", "min_lr_ratio", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optim.{name}: expected >= 0, got {getattr(self, name)}")


@dataclass
class TrainConfig:
    """Loop settings.

    Attributes:
        steps: optimisation steps (the poly schedule runs over these).
        max_minutes: wall-clock budget of the training loop; when set, the schedule's
            progress is the larger of ``step / steps`` and the elapsed fraction of the
            budget, and training stops when either runs out (used by ``hle demo``).
        batch_size: images per step per process. A training split with fewer images
            than ``batch_size`` x processes is repeated (each copy with its own
            augmentation) instead of refused.
        eval_every: evaluate on the validation split every N steps (0: only at the end;
            -1: never, no ``best.pt``).
        eval_images: evaluate on at most this many validation images (``None``: all).
        checkpoint_every: write ``last.pt`` every N steps (0: only before evaluations,
            on interruption and at the end). The previous one is kept as ``last.prev.pt``.
        log_every: TensorBoard scalar period in steps.
        amp: mixed precision; honoured on CUDA only.
        seed: seeds the model init, data order and augmentations.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        threads: torch intra-op CPU threads (``None``: torch's default). On a small
            shared CPU, one compute thread plus one data worker avoids OpenMP threads
            spinning against each other.
        max_bad_steps: a step whose loss or gradients are not finite is skipped (no
            update); this many in a row stop the run without touching its checkpoints.
    """

    steps: int = 90000
    max_minutes: Union[float, None] = None
    batch_size: int = 8
    eval_every: int = 5000
    eval_images: Union[int, None] = None
    checkpoint_every: int = 1000
    log_every: int = 20
    amp: bool = True
    seed: int = 0
    device: str = "auto"
    threads: Union[int, None] = None
    max_bad_steps: int = 5

    def __post_init__(self) -> None:
        at_least = {"steps": 1, "batch_size": 1, "eval_every": -1, "checkpoint_every": 0, "log_every": 1, "max_bad_steps": 1}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"train.{name}: expected >= {low}, got {getattr(self, name)}")
        for name in ("eval_images", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: expected >= 1 or null, got {getattr(self, name)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"train.max_minutes: expected > 0 or null, got {self.max_minutes}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device: expected one of 'auto', 'cpu', 'cuda', got {self.device!r}")


@dataclass
class EvalConfig:
    """Inference and decoding settings (Sec. 3.5, Supplementary C).

    Attributes:
        flip: test-time horizontal flip (Sec. 4.2).
        decoder: the decoder's thresholds, minimum areas and ``downsample`` (YAML:
            ``decoder: {seed_threshold: 0.45}``); tuned per dataset, checked at load time.
        native_resolution: decode the network's outputs at its decoder stride (4 for
            the ResNet and MobileNetV2 DeepLabV3+, 2 for ``tiny``) instead of first
            upsampling them to the image size: the id map is expanded to the image
            afterwards. Skips the bilinear upsampling of every output channel and
            decodes a 16x smaller map at stride 4 (like ``downsample: 4``, but
            reading the network's own pixels); ``decoder.downsample`` then reduces
            further.
    """

    flip: bool = True
    decoder: DecoderParams = field(default_factory=DecoderParams)
    native_resolution: bool = False


@dataclass
class Config:
    """A whole run: one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- types

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        suffix = " or null" if type(None) in args else ""
        return " or ".join(names) + suffix
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce_sequence(value: Any, tp: Any, key: str) -> list[Any] | tuple[Any, ...]:
    """``list[X]``, ``tuple[X, ...]`` and fixed ``tuple[X, Y]`` from a YAML list."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    items = [_coerce(v, args[0], key) for v in value] if args else list(value)
    return tuple(items) if origin is tuple else items


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """``bool``, ``int``, ``float`` and ``str`` (YAML scalars, no silent casts)."""
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it is.
            try:
                return float(value)
            except ValueError:
                pass
    if tp is str and isinstance(value, str):
        return value
    expected = "bool (true/false)" if tp is bool else tp.__name__
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _coerce(value: Any, tp: Any, key: str, strict: bool = True) -> Any:
    """Return ``value`` checked against (and lightly converted to) annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, strict)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(tp)):
            return value
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.", strict)
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, key)
    return value


def _section_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _build(cls: type, data: Any, prefix: str, strict: bool = True) -> Any:
    """Instance of dataclass ``cls`` from a mapping, every value checked; ``prefix`` names it."""
    if isinstance(data, cls):
        data = _plain(data)  # re-check an instance built in code (fields may have been assigned)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    fields = _section_fields(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            if not strict:
                continue
            raise ConfigError(f"unknown config key '{key}' (valid: {', '.join(sorted(fields))})")
        kwargs[name] = _coerce(value, fields[name], key, strict)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a class's own range checks (__post_init__)
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from None


def _plain(obj: Any) -> Any:
    """Nested plain data (dicts, lists, scalars) of a dataclass tree; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return copy.deepcopy(obj)


def config_from_dict(data: dict, *, strict: bool = True) -> Config:
    """Build a :class:`Config` from nested plain data (as in YAML or a checkpoint).

    Args:
        data: nested mapping. ``loss.options`` and ``eval.decoder`` are mappings of
            :class:`HLELossOptions` / :class:`DecoderParams` fields (the plain dicts of
            checkpoints written before they were typed read the same way).
        strict: reject unknown keys. Checkpoints are read with ``strict=False`` so a
            key removed in a later version does not make old checkpoints unreadable.

    Raises:
        ConfigError: unknown key (when strict), wrong type or out-of-range value, naming
            the dotted key.
    """
    return _build(Config, data, "", strict)


def check_config(config: Config) -> Config:
    """A freshly built and checked copy of ``config`` (fields assigned in code included).

    Raises:
        ConfigError: as :func:`config_from_dict`.
    """
    return config_from_dict(config_to_dict(config))


def config_to_dict(config: Config) -> dict:
    """Nested plain-data form of ``config`` (YAML/JSON/checkpoint friendly; tuples as lists)."""
    return _plain(config)


# ----------------------------------------------------------------------- overrides

def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``section.key=value`` strings; values are YAML scalars/lists.

    ``train.steps=100``, ``data.crop_size=[128,256]``, ``model.pretrained=null``,
    ``eval.decoder.seed_threshold=0.3``.

    Raises:
        ConfigError: an override without ``=`` or with an unparsable value.
    """
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': cannot parse value ({exc.__class__.__name__})") from None
        parsed.append((key, value))
    return parsed


def _override_key_type(parts: list[str]) -> Any:
    """Check the dotted key ``parts`` against the dataclasses; its field type (``None``: free)."""
    cls: Any = Config
    tp: Any = None
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if cls is None:  # below a free-form mapping field (model.options, data.options)
            return None
        fields = _section_fields(cls)
        if part not in fields:
            raise ConfigError(f"unknown config key '{path}' (valid: {', '.join(sorted(fields))})")
        tp = fields[part]
        if i == len(parts) - 1:
            break
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif tp is dict or typing.get_origin(tp) is dict:
            cls = None
        else:
            raise ConfigError(f"config key '{path}' has type {_type_name(tp)} and no sub-keys")
    return tp


def apply_overrides(
    data: dict, overrides: list[tuple[str, Any]], *, allowed_sections: Sequence[str] | None = None
) -> dict:
    """Write dotted-key overrides into nested plain data (a copy), checking keys.

    Keys must name an existing dataclass field, down to the fields of ``loss.options``
    and ``eval.decoder``; below a free-form mapping field (``model.options``,
    ``data.options``) any sub-key is accepted. Types are checked when the config is built.

    Args:
        data: nested plain data (from YAML or :func:`config_to_dict`).
        overrides: ``(dotted key, value)`` pairs from :func:`parse_overrides`.
        allowed_sections: sections or dotted keys that may be overridden, with all
            their sub-keys (``None``: all); ``hle evaluate`` passes
            ``("eval", "data.max_side")``, the only settings that apply there.

    Raises:
        ConfigError: unknown key, a key below a non-mapping field, or a section not in
            ``allowed_sections``.
    """
    out = copy.deepcopy(data)
    for key, value in overrides:
        parts = key.split(".")
        _override_key_type(parts)
        if allowed_sections is not None and not any(key == a or key.startswith(a + ".") for a in allowed_sections):
            allowed = ", ".join(a if "." in a else f"{a}.*" for a in allowed_sections)
            raise ConfigError(f"override '{key}' does not apply here (only {allowed} overrides do)")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- files

def available_configs() -> list[str]:
    """Names of the configs shipped in ``hle/configs``."""
    folder = resources.files("hle") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(path_or_name: str | Path) -> dict:
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text()
        where = str(path)
    else:
        name = str(path_or_name)
        resource = resources.files("hle") / "configs" / f"{name}.yaml"
        if not resource.is_file():
            raise ConfigError(
                f"unknown config '{name}' (not a file; shipped configs: {', '.join(available_configs())})"
            )
        text = resource.read_text()
        where = f"hle/configs/{name}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"{where}: invalid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return data


def load_config(path_or_name: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a config by package name (``"synthetic"``) or path, then apply overrides.

    Args:
        path_or_name: a shipped config name (see :func:`available_configs`) or a path
            to a YAML file.
        overrides: ``["train.steps=100", "optim.lr=1e-3", ...]``.

    Returns:
        The checked :class:`Config`.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key or wrong type; the message
            is one line naming the key and the expected type.
    """
    data = _read_yaml(path_or_name)
    data = apply_overrides(data, parse_overrides(list(overrides or [])))
    return config_from_dict(data)
