"""Typed run configuration: dataclasses, YAML loading and ``key=value`` overrides.

This module owns the one place where YAML becomes Python: :func:`load_config` reads a
named package config (``hle/configs/<name>.yaml``) or a file path, applies dotted
``section.key=value`` overrides, and checks every value against the dataclass field's
type, so a typo fails at start-up with one line naming the key and the type expected.
Only the CLI calls :func:`load_config`; library code takes plain keyword arguments
(the engine reads the sections it needs). The defaults are the paper's Cityscapes
settings (Sec. 4.2) where the paper gives one; the demo's from-scratch settings live in
``synthetic.yaml``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

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
        options: keyword arguments of ``hle.core.hle_loss.HLELossOptions`` (e.g.
            ``{gamma: 10.0}``); unknown keys fail when training starts.
    """

    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """Dataset and augmentation settings.

    Attributes:
        name: dataset loader name (``synthetic``, ``cityscapes``, ``coco``, ``vistas``,
            ``coco_panoptic`` for a custom dataset in COCO panoptic layout).
        root: dataset root folder.
        train_split, val_split: split names passed to the loader.
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
    val_split: str = "val"
    crop_size: Union[list[int], None] = field(default_factory=lambda: [1024, 2048])
    max_side: Union[int, None] = None
    min_scale: float = 0.5
    max_scale: float = 2.0
    crop_around_things: bool = True
    flip: bool = True
    jitter: bool = True
    num_workers: int = 2
    options: dict = field(default_factory=dict)


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


@dataclass
class TrainConfig:
    """Loop settings.

    Attributes:
        steps: optimisation steps (the poly schedule runs over these).
        max_minutes: wall-clock budget of the training loop; when set, the schedule's
            progress is the larger of ``step / steps`` and the elapsed fraction of the
            budget, and training stops when either runs out (used by ``hle demo``).
        batch_size: images per step per process.
        eval_every: evaluate on the validation split every N steps (0: only at the end).
        eval_images: evaluate on at most this many validation images (``None``: all).
        checkpoint_every: write ``last.pt`` every N steps (interrupts always write one).
        log_every: TensorBoard scalar period in steps.
        amp: mixed precision; honoured on CUDA only.
        seed: seeds the model init, data order and augmentations.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        threads: torch intra-op CPU threads (``None``: torch's default). On a small
            shared CPU, one compute thread plus one data worker avoids OpenMP threads
            spinning against each other.
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


@dataclass
class EvalConfig:
    """Inference and decoding settings (Sec. 3.5, Supplementary C).

    Attributes:
        flip: test-time horizontal flip (Sec. 4.2).
        decoder: keyword arguments of ``hle.core.decode.decode_panoptic`` (thresholds,
            minimum areas, ``downsample``); tuned per dataset.
        native_resolution: decode the network's outputs at its decoder stride (4 for
            the ResNet and MobileNetV2 DeepLabV3+, 2 for ``tiny``) instead of first
            upsampling them to the image size: the id map is expanded to the image
            afterwards. Skips the bilinear upsampling of every output channel and
            decodes a 16x smaller map at stride 4 (like ``downsample: 4``, but
            reading the network's own pixels); ``decoder.downsample`` then reduces
            further.
    """

    flip: bool = True
    decoder: dict = field(default_factory=dict)
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
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        suffix = " or null" if type(None) in args else ""
        return " or ".join(names) + suffix
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
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
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        args = typing.get_args(tp)
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it is.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    return value


def _section_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls: type, data: Any, prefix: str, strict: bool = True) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    fields = _section_fields(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            if not strict:
                continue
            raise ConfigError(
                f"unknown config key '{key}' (valid: {', '.join(sorted(fields))})"
            )
        tp = fields[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{key}.", strict)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def config_from_dict(data: dict, *, strict: bool = True) -> Config:
    """Build a :class:`Config` from nested plain data (as in YAML or a checkpoint).

    Args:
        data: nested mapping.
        strict: reject unknown keys. Checkpoints are read with ``strict=False`` so a
            key removed in a later version does not make old checkpoints unreadable.

    Raises:
        ConfigError: unknown key (when strict) or wrong type, naming the dotted key.
    """
    return _build(Config, data, "", strict)


def config_to_dict(config: Config) -> dict:
    """Nested plain-data form of ``config`` (YAML/JSON/checkpoint friendly)."""
    return dataclasses.asdict(config)


# ----------------------------------------------------------------------- overrides

def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``section.key=value`` strings; values are YAML scalars/lists.

    ``train.steps=100``, ``data.crop_size=[128,256]``, ``model.pretrained=null``,
    ``eval.decoder.seed_threshold=0.3`` (keys inside mapping fields are free-form).

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


def apply_overrides(data: dict, overrides: list[tuple[str, Any]]) -> dict:
    """Write dotted-key overrides into nested plain data (a copy), checking keys.

    Keys must name an existing dataclass field; below a mapping field (``options``,
    ``decoder``) any sub-key is accepted. Types are checked when the config is built.
    """
    import copy

    out = copy.deepcopy(data)
    for key, value in overrides:
        parts = key.split(".")
        cls: Any = Config
        node = out
        for i, part in enumerate(parts):
            path = ".".join(parts[: i + 1])
            if cls is not None:
                fields = _section_fields(cls)
                if part not in fields:
                    raise ConfigError(
                        f"unknown config key '{path}' (valid: {', '.join(sorted(fields))})"
                    )
                tp = fields[part]
            else:
                tp = None
            last = i == len(parts) - 1
            if last:
                node[part] = value
                break
            if tp is not None and dataclasses.is_dataclass(tp):
                cls = tp
            elif tp is dict or typing.get_origin(tp) is dict or tp is None:
                cls = None
            else:
                raise ConfigError(f"config key '{path}' has type {_type_name(tp)} and no sub-keys")
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"config key '{path}' is not a mapping")
            node = child
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
