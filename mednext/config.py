"""Experiment configuration: YAML files composed with ``extends:``, ``key=value`` overrides,
``${oc.env:...}`` interpolation, and validation with errors that name the key, where it came from
and the closest valid key.

An experiment is ``experiments/<name>.yaml``. Its ``extends:`` (one path or a list, relative to the
experiments folder) are merged left to right, then the file itself, then the overrides. Groups with
a fixed schema are dataclasses below; ``data`` is checked against the ``Config`` dataclass of the
chosen DataModule, ``model`` against the chosen network's constructor and ``trainer`` against
``lightning.Trainer``. Nothing in a configuration names a Python object: models and datasets are
registry names.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

#: The experiments shipped with the suite; a name resolves here, a path anywhere.
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user as is."""


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 3e-5
    eps: float = 1e-8
    momentum: float = 0.99
    nesterov: bool = True
    scheduler: str = "poly"  # poly | cosine | none
    poly_power: float = 0.9
    # "epoch" (MedNeXt/nnU-Net: one step per epoch) or "step" (per iteration).
    scheduler_interval: str = "epoch"
    # cosine: linear warm-up over this many epochs (fractions allowed with interval "step"), then
    # a half cosine from lr down to min_lr.
    warmup_epochs: float = 0.0
    min_lr: float = 0.0


@dataclass
class LossConfig:
    name: str = "dice_ce"  # dice_ce (segmentation) | ce (classification)
    # Cross-entropy label smoothing (classification).
    label_smoothing: float = 0.0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    include_background: bool = False
    # Dice over the whole batch as one volume (nnU-Net's batch_dice for 3D) or per sample.
    batch_dice: bool = True
    # Deep-supervision weights, full resolution first; None: nnU-Net's 1/2**i, normalised.
    ds_weights: list[float] | None = None


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "mednext"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_images: bool = True


@dataclass
class InitConfig:
    checkpoint: str | None = None
    upkern_from: str | None = None


@dataclass
class EvalConfig:
    sw_overlap: float = 0.5
    sw_batch_size: int = 2
    mirror_tta: bool = False
    # Mirrored copies of a window per forward pass; None: all of them on CUDA, 1 on the CPU.
    mirror_batch: int | None = None
    # Sliding-window inference under fp16 autocast on CUDA (ignored on the CPU).
    autocast: bool = True
    hd95: bool = True
    # The validation metric that picks checkpoints/best.ckpt (without "val/"; hd95* is minimised,
    # anything else maximised); None: the task's own (segmentation dice_mean, classification acc).
    monitor: str | None = None


@dataclass
class OutputConfig:
    root: str = "runs"
    # Where the leaderboard is regenerated after every run; None: leaderboard/ beside root.
    leaderboard: str | None = None


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    resume: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    init: InitConfig = field(default_factory=InitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# Trainer arguments the suite sets itself, and where the user configures them instead.
_TRAINER_RESERVED = {
    "logger": "logger.*",
    "callbacks": "the suite's own callbacks",
    "default_root_dir": "output.root",
    "enable_checkpointing": "the suite's checkpointing (always on)",
    "plugins": "precision and strategy keys",
}
# Model arguments that come from the dataset.
_MODEL_FROM_DATA = ("in_channels", "num_classes")


@dataclass(frozen=True)
class Source:
    """One layer of configuration: a file or the command line."""

    label: str
    values: DictConfig


def resolve_experiment_path(name_or_path: str | os.PathLike[str]) -> Path:
    """``synapse_mednext_b`` -> ``experiments/synapse_mednext_b.yaml``; a path is taken as is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate.resolve()
        raise ConfigError(f"experiment file not found: {candidate}")
    path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if path.is_file():
        return path
    known = list_experiments()
    close = difflib.get_close_matches(str(name_or_path), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown experiment {str(name_or_path)!r} (looked for {path}).{hint} "
        f"`mednext train --list` shows all {len(known)} experiments."
    )


def list_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def _load_yaml(path: Path) -> DictConfig:
    import yaml

    try:
        values = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as error:
        # yaml's own errors (syntax, a !!python/... tag the safe loader refuses) say where.
        detail = " ".join(str(error).split())
        raise ConfigError(f"{path}: cannot be read as YAML: {detail}") from error
    if not isinstance(values, DictConfig):
        raise ConfigError(f"{path}: an experiment file must be a mapping of keys, not a list")
    return values


def _file_sources(path: Path, chain: tuple[Path, ...] = ()) -> list[Source]:
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ConfigError(f"{path}: `extends` forms a cycle: {cycle}")
    values = _load_yaml(path)
    parents = values.pop("extends", None)
    if isinstance(parents, str):
        parents = [parents]
    sources: list[Source] = []
    for parent in parents or []:
        parent_path = (EXPERIMENTS_DIR / parent) if not Path(parent).is_absolute() else Path(parent)
        if not parent_path.is_file():
            parent_path = (path.parent / parent).resolve()
        if not parent_path.is_file():
            raise ConfigError(
                f"{path}: `extends: {parent}` not found (relative to {EXPERIMENTS_DIR})"
            )
        sources += _file_sources(parent_path, (*chain, path))
    sources.append(Source(_display(path), values))
    return sources


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _override_source(overrides: Sequence[str]) -> Source:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"command-line override {item!r} is not of the form key=value "
                "(e.g. trainer.max_epochs=5 or data.patch_size=[64,64,64])"
            )
        if item.split("=", 1)[0].strip() == "extends":
            raise ConfigError("`extends` cannot be overridden on the command line")
    try:
        return Source("the command line", OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as error:
        raise ConfigError(f"command-line overrides: {error}") from error


def _leaves(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf (lists are leaves), interpolations left unresolved."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=False)
    if isinstance(values, dict):
        for key, value in values.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def _schema_keys(schema: Any) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(schema)}


def _unknown_key_error(key: str, source: Source, valid: Sequence[str], group: str) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(valid), n=1, cutoff=0.5)
    hint = f" Did you mean {group + '.' if group else ''}{close[0]}?" if close else ""
    options = ", ".join(sorted(valid))
    return ConfigError(
        f"unknown key {key!r} in {source.label}.{hint} Valid keys of "
        f"{group or 'the top level'}: {options}"
    )


def _valid_keys(group: str, merged: DictConfig) -> list[str] | None:
    """The keys allowed inside ``group`` given the merged configuration, None for any."""
    if group == "trainer":
        import lightning

        parameters = inspect.signature(lightning.Trainer.__init__).parameters
        return [name for name in parameters if name != "self"]
    if group == "model":
        from mednext.models.runtime import RUN_OPTIONS

        return ["name", "variant", *RUN_OPTIONS, *_model_parameters(merged)]
    if group == "data":
        return [f.name for f in dataclasses.fields(_data_config_class(merged))]
    return None


def _model_parameters(merged: DictConfig) -> list[str]:
    from mednext.models import get_family

    name = OmegaConf.select(merged, "model.name")
    try:
        family = get_family(str(name))
    except KeyError as error:
        raise ConfigError(f"model.name: {error.args[0]}") from error
    constructor = family.constructor
    return [
        p
        for p in inspect.signature(constructor.__init__).parameters
        if p not in ("self", *_MODEL_FROM_DATA)
    ]


def _data_config_class(merged: DictConfig) -> type:
    from datamodules import datamodule_class

    name = OmegaConf.select(merged, "data.name")
    try:
        return datamodule_class(str(name)).Config
    except KeyError as error:
        raise ConfigError(f"data.name: {error.args[0]}") from error


def _check_keys(sources: Sequence[Source], merged: DictConfig) -> None:
    top = _schema_keys(ExperimentConfig)
    for source in sources:
        for key in _leaves(source.values):
            parts = key.split(".")
            if parts[0] not in top:
                raise _unknown_key_error(key, source, list(top), "")
            group = parts[0]
            if len(parts) == 1:
                continue
            valid = _valid_keys(group, merged)
            if valid is not None:
                if parts[1] not in valid:
                    raise _unknown_key_error(key, source, valid, group)
                if group == "trainer" and parts[1] in _TRAINER_RESERVED:
                    raise ConfigError(
                        f"{key!r} in {source.label} is set by the suite; use "
                        f"{_TRAINER_RESERVED[parts[1]]} instead"
                    )
                continue
            schema = top[group].default_factory
            for depth, part in enumerate(parts[1:], start=1):
                fields = _schema_keys(schema)
                if part not in fields:
                    raise _unknown_key_error(key, source, list(fields), ".".join(parts[:depth]))
                factory = fields[part].default_factory
                if not (dataclasses.is_dataclass(factory) and isinstance(factory, type)):
                    break
                schema = factory


def _source_of(key: str, sources: Sequence[Source]) -> str:
    for source in reversed(sources):
        if OmegaConf.select(source.values, key, default=None, throw_on_missing=False) is not None:
            return source.label
    return "the defaults"


def _typed(schema: Any, values: Any, group: str, sources: Sequence[Source]) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), values)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or ""
        full = f"{group}.{key}" if group and key else (group or key)
        message = getattr(error, "msg", str(error))
        raise ConfigError(f"{full!r} in {_source_of(full, sources)}: {message}") from error


#: The keys of a plan file's ``data:`` that an experiment takes (``mednext plan``).
PLAN_KEYS = ("spacing", "patch_size", "batch_size")


def _plan_source(path: Path, merged: DictConfig) -> Source:
    """The ``data`` keys of plan file ``path`` as a layer of configuration; a ``ConfigError``
    when it cannot be read or was made for another network."""
    if not path.is_file():
        raise ConfigError(f"data.plan: {path} does not exist (`mednext plan` writes one)")
    values = _load_yaml(path)
    data = values.get("data")
    if not isinstance(data, DictConfig) or not any(key in data for key in PLAN_KEYS):
        raise ConfigError(f"data.plan: {path} has no data: {', '.join(PLAN_KEYS)} (not a plan)")
    planned = values.get("model") or {}
    for key in ("name", "variant"):
        wanted, have = planned.get(key), OmegaConf.select(merged, f"model.{key}", default=None)
        if wanted is not None and wanted != have:
            raise ConfigError(
                f"data.plan: {path} was made for model.{key}={wanted}, this experiment has "
                f"model.{key}={have}; plan again with `mednext plan` for this network"
            )
    picked = {key: data[key] for key in PLAN_KEYS if key in data}
    return Source(f"plan {path}", OmegaConf.create({"data": picked}))


def compose(name_or_path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> DictConfig:
    """The validated, fully resolved configuration of an experiment."""
    path = resolve_experiment_path(name_or_path)
    sources = [*_file_sources(path), _override_source(overrides)]
    merged = OmegaConf.merge(*(source.values for source in sources))
    if not isinstance(merged, DictConfig):
        raise ConfigError(f"{path}: not a mapping")
    plan = OmegaConf.select(merged, "data.plan", default=None)
    if plan:
        # The plan's data keys sit between the experiment's files and the command line.
        sources.insert(len(sources) - 1, _plan_source(Path(str(plan)), merged))
        merged = OmegaConf.merge(*(source.values for source in sources))
    _check_keys(sources, merged)
    data_schema = _data_config_class(merged)
    data = _typed(data_schema, merged.get("data", {}), "data", sources)
    rest = {k: v for k, v in merged.items() if k != "data"}
    config = _typed(ExperimentConfig, rest, "", sources)
    combined = OmegaConf.create(
        {
            **OmegaConf.to_container(config, resolve=False),
            "data": OmegaConf.to_container(data, resolve=False),
        }
    )
    try:
        resolved = OmegaConf.to_container(combined, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve {getattr(error, 'full_key', '')!r}: {error}") from error
    final = OmegaConf.create(resolved)
    _check_values(final)
    return final


def _check_values(config: DictConfig) -> None:
    choices = {
        "optim.name": ("adamw", "adam", "sgd"),
        "optim.scheduler": ("poly", "cosine", "none"),
        "optim.scheduler_interval": ("epoch", "step"),
        "loss.name": ("dice_ce", "ce"),
        "logger.wandb.mode": ("offline", "online", "disabled"),
    }
    for key, allowed in choices.items():
        value = OmegaConf.select(config, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(allowed)}")
    _check_name(str(OmegaConf.select(config, "name")))
    bounds = {
        "optim.lr": (lambda v: v > 0, "a positive learning rate"),
        "optim.weight_decay": (lambda v: v >= 0, "at least 0"),
        "optim.eps": (lambda v: v > 0, "positive"),
        "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "optim.poly_power": (lambda v: v > 0, "positive"),
        "optim.warmup_epochs": (lambda v: v >= 0, "at least 0"),
        "optim.min_lr": (
            lambda v: 0 <= v <= OmegaConf.select(config, "optim.lr"),
            "in [0, optim.lr]",
        ),
    }
    for key, (valid, expected) in bounds.items():
        value = OmegaConf.select(config, key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and valid(value)):
            raise ConfigError(f"{key}={value!r}: must be {expected}")
    mirror_batch = OmegaConf.select(config, "eval.mirror_batch")
    if mirror_batch is not None and mirror_batch < 1:
        raise ConfigError(f"eval.mirror_batch={mirror_batch}: at least 1, or null for automatic")
    source = OmegaConf.select(config, "data.source")
    if source not in ("real", "synthetic"):
        raise ConfigError(f"data.source={source!r}: choose real or synthetic")


def _check_name(name: str) -> None:
    """``name`` is the run's folder below ``output.root`` (a sweep point's ``<sweep>/<point>``):
    a relative path that stays inside it."""
    parts = name.replace("\\", "/").split("/")
    if (
        not name.strip()
        or name.startswith(("/", "\\", "~"))
        or any(p in ("..", ".", "") for p in parts)
    ):
        raise ConfigError(
            f"name={name!r}: the run folder's name below output.root must be a relative path "
            "without '..', '.' or a leading '/' or '~' (e.g. synapse_mednext_b)"
        )


def to_yaml(config: DictConfig) -> str:
    return OmegaConf.to_yaml(config)


def as_dict(node: DictConfig | ListConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A plain ``dict`` (lists as lists) of a configuration group."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node)
