"""The run record's one owner: what to run (`RunSpec`), how its settings resolve, and its record.

Resolution layers the strategy's Config defaults <- the chosen recipe <- `--set` for the strategy,
the stream, the backbone and the augmentation. The resolved settings are the run's record: written
into `result.json` as `config`, hashed into the run id, and read back by `RunSpec.from_record`, so a
replay resolves to the same run id by construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from cilbench.api import STRATEGIES, STREAMS
from cilbench.backbones.model import Backbone
from cilbench.backbones.preprocessing import BACKBONE_SETTINGS
from cilbench.backbones.spec import BackboneSpec
from cilbench.core.config import (
    AvailableDevice,
    NonNegative,
    OneOf,
    Positive,
    Range,
    as_dict,
    check,
    resolve,
    resolve_settings,
    settings_schema,
    split_sections,
)
from cilbench.core.devices import PRECISIONS, resolve_precision
from cilbench.core.errors import ConfigError
from cilbench.core.paths import default_cache_dir
from cilbench.data.augment import Augmentation, resolve_augmentation
from cilbench.data.jpeg_decode import DECODERS, resolve_decode
from cilbench.data.streams import Stream, StreamBuilder
from cilbench.engine.recipes import RECIPE_KEY, ChosenRecipe, choose, follow_seed

DEFAULT_STRATEGY = "nmc"
DEFAULT_STREAM = "split-fashion-mnist-mini"


@dataclass(frozen=True)
class RunSpec:
    """What to run; `overrides` are `--set` pairs (strategy keys, `stream.*`, `backbone.*`).

    `stream` is a registered name, a stream builder object (its `stream.*` options still apply)
    or a built `Stream`; `backbone` is a name (preset, timm tag, `file:<path>@<architecture>`), a
    `BackboneSpec`, or a `Backbone` object, or None for the stream's default backbone.
    """

    strategy: str = DEFAULT_STRATEGY
    stream: str | StreamBuilder | Stream = DEFAULT_STREAM
    backbone: str | BackboneSpec | Backbone | None = None
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_root: Path | None = None
    out_dir: Path = Path("runs")
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    device: Annotated[str, AvailableDevice()] = "auto"
    batch_size: Annotated[int, Positive()] = 128
    num_workers: Annotated[int | None, NonNegative()] = None
    """Data-loader processes; None: one per available core for image files, 0 for arrays."""
    precision: Annotated[str, OneOf(*PRECISIONS)] = "auto"
    """Compute precision of the models (autocast); auto: bf16 on CUDA, fp32 elsewhere."""
    compile: bool = False
    """`torch.compile` the frozen extraction and the training forward (results equal eager)."""
    decode: Annotated[str, OneOf(*DECODERS)] = "cpu"
    """Where frozen extraction decodes JPEG files: 'gpu' (batched, on CUDA; else the CPU)."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **options: Any) -> RunSpec:
        """The spec that resolves to the run a result's `config` records (see `run_record`).

        Every resolved setting becomes an explicit override, so the replay does not depend on
        today's defaults or recipes; `options` sets what a record does not fix (`out_dir`,
        `cache_dir`, `data_root`, `device`, `num_workers`, `compile`). A record older than the
        precision setting replays at the precision it ran at (see `LATER_KEYS`).
        """
        overrides: dict[str, Any] = dict(record["strategy_config"])
        for section, key in (("stream", "stream_options"), ("backbone", "backbone_settings")):
            overrides.update({f"{section}.{k}": v for k, v in record[key].items()})
        overrides.update({f"augment.{k}": v for k, v in record["augmentation"].items()})
        if record.get("recipe"):
            overrides[RECIPE_KEY] = record["recipe"]
        return cls(
            strategy=record["strategy"],
            stream=record["stream"],
            backbone=record["backbone"],
            seed=record["seed"],
            overrides=overrides,
            batch_size=record["eval_batch_size"],
            precision=record.get("precision", LATER_KEYS["precision"]),
            decode=record.get("decode", LATER_KEYS["decode"]),
            **options,
        )


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass(frozen=True)
class RunSettings:
    """Every setting of a run, resolved and validated (recipe chosen, `--set` applied)."""

    recipe: ChosenRecipe
    builder: StreamBuilder | Stream
    """The stream builder with its options applied, or the built Stream the spec gave."""
    config: Any
    backbone: str | BackboneSpec | Backbone
    backbone_settings: dict[str, Any]
    augmentation: Augmentation
    device: str
    """The resolved device ('cpu', 'cuda', 'cuda:1', ...): the spec's, or a Backbone object's."""
    precision: str
    """The resolved precision (`core.devices.resolve_precision` on `device`)."""
    decode: str
    """The resolved JPEG decoder (`data.jpeg_decode.resolve_decode` on `device`)."""


def resolve_run(spec: RunSpec) -> RunSettings:
    """Layer defaults <- recipe <- `--set` for the strategy, stream, backbone and augmentation."""
    check(spec, what="run option")
    _check_python_values(spec)
    sections = split_sections(spec.overrides)
    strategy_cls = STRATEGIES.get(spec.strategy)
    recipe = choose(spec.strategy, strategy_cls, _recipe_name(spec.stream), sections["strategy"])
    layers = recipe.sections()
    source = _stream_source(spec.stream, layers["stream"], sections["stream"], spec.seed)
    strategy_keys = {k: v for k, v in sections["strategy"].items() if k != RECIPE_KEY}
    config: Any = resolve(
        strategy_cls.Config,
        layers["strategy"],
        strategy_keys,
        what=f"strategy {spec.strategy!r} config",
    )
    backbone, settings = _backbone_choice(spec, source, recipe, layers["backbone"], sections)
    device = str(backbone.device) if isinstance(backbone, Backbone) else resolve_device(spec.device)
    return RunSettings(
        recipe=recipe,
        builder=source,
        config=config,
        backbone=backbone,
        backbone_settings=settings,
        augmentation=resolve_augmentation(layers["augment"], sections["augment"]),
        device=device,
        precision=_precision_of(spec, backbone, device),
        decode=resolve_decode(spec.decode, device),
    )


def _precision_of(spec: RunSpec, backbone: str | BackboneSpec | Backbone, device: str) -> str:
    """The run's resolved precision; a Backbone object given keeps its own."""
    if not isinstance(backbone, Backbone):
        return resolve_precision(spec.precision, device)
    if spec.precision not in ("auto", backbone.precision):
        raise ConfigError(
            f"run option 'precision' is {spec.precision!r} but the Backbone object given runs at "
            f"{backbone.precision!r}; pass precision='auto' or a backbone made at that precision."
        )
    return backbone.precision


def _check_python_values(spec: RunSpec) -> None:
    """What only the Python API can pass: NUL bytes in paths, keys that are not text."""
    for name in ("data_root", "out_dir", "cache_dir"):
        value = getattr(spec, name)
        if value is not None and "\x00" in str(value):
            raise ConfigError(f"run option {name!r} holds a NUL byte: {str(value)!r}.")
    keys = [key for key in spec.overrides if not isinstance(key, str)]
    if keys:
        raise ConfigError(f"RunSpec.overrides keys are --set keys (text); got {keys!r}.")


def _recipe_name(stream: str | StreamBuilder | Stream) -> str:
    """The stream name a strategy's recipes are looked up by."""
    if isinstance(stream, Stream):
        return stream.info.name
    if isinstance(stream, str):
        return stream
    cls = type(stream)
    return next((n for n in STREAMS.names() if STREAMS.get(n) is cls), cls.__name__)


def _stream_source(
    stream: str | StreamBuilder | Stream,
    recipe_options: Mapping[str, Any],
    options: Mapping[str, Any],
    seed: int,
) -> StreamBuilder | Stream:
    """The builder with the recipe's then the user's `stream.*` options applied, or the Stream.

    A builder object keeps the fields its author set: only the user's options change it. A built
    Stream takes no options at all. `class_order=pycil` becomes `pycil-<seed>`.
    """
    if isinstance(stream, Stream):
        if options:
            raise ConfigError(
                f"stream options ({', '.join('stream.' + k for k in options)}) need a stream "
                "name or builder; the Stream object given is already built."
            )
        return stream
    what = f"stream {_recipe_name(stream)!r} option"
    if isinstance(stream, str):
        return _follow_seed(resolve(STREAMS.get(stream), recipe_options, options, what=what), seed)
    if not isinstance(stream, StreamBuilder) or not dataclasses.is_dataclass(stream):
        raise ConfigError(
            "RunSpec.stream must be a stream name, a StreamBuilder dataclass or a Stream; "
            f"got {stream!r}."
        )
    changes = resolve_settings(options, settings_schema(type(stream)), what)
    return _follow_seed(check(dataclasses.replace(stream, **changes), what), seed)


def _follow_seed(builder: StreamBuilder, seed: int) -> StreamBuilder:
    """`class_order=pycil` becomes `pycil-<seed>`, so `--seed` picks the papers' class order."""
    order = getattr(builder, "class_order", None)
    if order != "pycil":
        return builder
    return dataclasses.replace(builder, class_order=follow_seed(order, seed))  # type: ignore[type-var]


def _backbone_choice(
    spec: RunSpec,
    source: StreamBuilder | Stream,
    recipe: ChosenRecipe,
    recipe_settings: Mapping[str, Any],
    sections: Mapping[str, Mapping[str, Any]],
) -> tuple[str | BackboneSpec | Backbone, dict[str, Any]]:
    """(the backbone to use, the preprocessing settings applied to it).

    The stream's default or the recipe's backbone gets the reference preprocessing (the stream's
    default settings, then the recipe's); any other backbone keeps its own. `backbone.*` settings
    always apply last.
    """
    overrides = sections["backbone"]
    choice = spec.backbone
    if isinstance(choice, Backbone):
        if overrides:
            raise ConfigError(
                "backbone.* settings apply to a backbone given by name or spec; a Backbone object "
                "already has its preprocessing."
            )
        if spec.device not in ("auto", str(choice.device)):
            raise ConfigError(
                f"run option 'device' is {spec.device!r} but the Backbone object given is on "
                f"{choice.device}; pass device='auto' or a backbone on {spec.device!r}."
            )
        return choice, {}
    if choice is None and isinstance(source, Stream):
        raise ConfigError(
            "RunSpec.backbone is required with a Stream object (a stream builder declares a "
            "default backbone; a built Stream does not)."
        )
    defaults = source if isinstance(source, StreamBuilder) else StreamBuilder
    name = choice if choice is not None else recipe.backbone or defaults.default_backbone
    settings: dict[str, Any] = {}
    if name in (defaults.default_backbone, recipe.backbone):  # reference preprocessing
        settings.update(defaults.default_backbone_settings)
        settings.update(resolve_settings(recipe_settings, BACKBONE_SETTINGS, "backbone"))
    settings.update(resolve_settings(overrides, BACKBONE_SETTINGS, "backbone"))
    return name, settings


def run_record(
    spec: RunSpec, settings: RunSettings, stream_name: str, backbone_tag: str
) -> dict[str, Any]:
    """The resolved settings that define a run: `config` in result.json, the run id's input.

    It names where and how the run computes (`device`, `precision`, `compile`); `run_id_of` says
    which of those the id hashes. JSON-normalised (tuples become lists), as result files store it.
    """
    source, choice = settings.builder, settings.backbone
    record = {
        "strategy": spec.strategy,
        "strategy_config": as_dict(settings.config),
        "stream": stream_name,
        "stream_options": {} if isinstance(source, Stream) else source.options(),
        "backbone": choice if isinstance(choice, str) else backbone_tag,
        "backbone_settings": settings.backbone_settings,
        "augmentation": as_dict(settings.augmentation),
        "recipe": settings.recipe.recipe.name,
        "seed": spec.seed,
        "eval_batch_size": spec.batch_size,
        "device": settings.device,
        "precision": settings.precision,
        "decode": settings.decode,
        "compile": spec.compile,
    }
    return dict(json.loads(json.dumps(record)))


RECORDED_ONLY = frozenset({"device", "compile"})
"""Record keys the run id never hashes: where and how a run computed, not what it computed
(compiled and eager results are equal; another device's result is guarded in `engine.loop`)."""
LATER_KEYS: dict[str, Any] = {"precision": "fp32", "decode": "cpu"}
"""Record keys added after result schema v2, each with the value every older result implicitly
had (they all ran in float32 on the CPU and decoded images on the CPU). The run id hashes such
a key only when it differs from that value, so every older result keeps its run id;
`RunSpec.from_record` replays a record without the key at that value."""


LATER_STRATEGY_FIELDS: dict[str, dict[str, Any]] = {
    "l2p": {"head_init": "trunc-normal", "init_symmetric": False, "vote_ties": "lower-id"},
    "dualprompt": {"head_init": "trunc-normal", "init_symmetric": False, "vote_ties": "lower-id"},
    "coda-prompt": {"head_init": "trunc-normal", "gram_schmidt": "span"},
}
"""Per strategy, Config fields added after results of it were published, each with the value that
gives what those results computed (LAMDA-PILOT alignment of the prompt methods). As `LATER_KEYS`:
the run id hashes such a field only away from that value."""


def identity_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a record that the run id hashes (see `RECORDED_ONLY`, `LATER_KEYS` and
    `LATER_STRATEGY_FIELDS`)."""
    identity = {
        k: v
        for k, v in record.items()
        if k not in RECORDED_ONLY and not (k in LATER_KEYS and v == LATER_KEYS[k])
    }
    if "strategy_config" in identity:
        identity["strategy_config"] = _without_later_fields(identity)
    return identity


def _without_later_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's strategy config without `LATER_STRATEGY_FIELDS` at their old values."""
    later = LATER_STRATEGY_FIELDS.get(str(record.get("strategy")), {})
    config: Mapping[str, Any] = record["strategy_config"]
    return {k: v for k, v in config.items() if not (k in later and v == later[k])}


EQUAL_RESULT_KEYS = frozenset({"compile"})
"""Record keys whose values give equal results (compiled and eager runs agree within float
tolerance, tested): a finished result or a checkpoint of the same run under another value of
these is the same run, so `sweep` keeps it and `--resume` continues it."""


def same_run(record: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two records describe the same computation (equal except `EQUAL_RESULT_KEYS`)."""

    def compared(r: Mapping[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in r.items() if k not in EQUAL_RESULT_KEYS}
        if "strategy_config" in kept:
            kept["strategy_config"] = _without_later_fields(kept)
        return kept

    return compared(record) == compared(other)


def run_id_of(record: Mapping[str, Any], fingerprints: list[str], backbone_tag: str) -> str:
    """`<stream>/<strategy>-<backbone>-seed<N>-<hash of the record's identity and the data>`."""
    record = identity_of(record)
    identity = {"config": record, "data": sorted(fingerprints)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    label = re.sub(r"[^\w.+@-]", "_", backbone_tag)  # a folder name, whatever the spec's name
    return f"{record['stream']}/{record['strategy']}-{label}-seed{record['seed']}-{digest}"


def data_fingerprints(stream: Stream) -> list[str]:
    """The fingerprints of every image source a stream reads (part of the run id)."""
    views = [e.train for e in stream.experiences] + list(stream.test_sets)
    return sorted({view.source.fingerprint for view in views})
