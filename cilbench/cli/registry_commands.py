"""`cilbench ls`, `cilbench recipes` and `cilbench profile`: what is registered, what it costs."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from cilbench.cli import console
from cilbench.cli.options import (
    BackboneOpt,
    BatchOpt,
    CompileOpt,
    DataRootOpt,
    DecodeOpt,
    DeviceOpt,
    PrecisionOpt,
    SetOpt,
    StrategyOpt,
    StreamOpt,
    spec_from_options,
)
from cilbench.cli.tables import show_table


@console.user_errors
def ls_command(
    what: Annotated[str, typer.Argument(help="strategies, streams, backbones or profiles")] = "all",
) -> None:
    """List registered strategies, streams, backbone presets and profiles."""
    from cilbench.api import STRATEGIES, STREAMS
    from cilbench.backbones.spec import BACKBONES
    from cilbench.core.errors import ConfigError, did_you_mean
    from cilbench.core.registry import Registry
    from cilbench.profiles import PROFILES

    kinds: dict[str, Registry[Any]] = {
        "strategies": STRATEGIES,
        "streams": STREAMS,
        "backbones": BACKBONES,
        "profiles": PROFILES,
    }
    if what != "all" and what not in kinds:
        raise ConfigError(
            f"Cannot list {what!r}.{did_you_mean(what, kinds)} Choose one of {', '.join(kinds)}."
        )
    for kind, registry in kinds.items():
        if what not in ("all", kind):
            continue
        rows = [[name, _summary(registry.get(name))] for name in registry.names()]
        show_table(console.stdout, kind, ["name", "description"], rows)
    if what in ("all", "backbones"):
        console.stdout.print(
            "Any exact timm weight tag also works, e.g. vit_base_patch16_224.augreg_in21k."
        )


def _summary(obj: Any) -> str:
    text = getattr(obj, "description", "") or (obj.__doc__ or "")
    return " ".join(text.strip().split("\n\n")[0].split())  # the first paragraph, on one line


@console.user_errors
def recipes_command(
    strategy: Annotated[str | None, typer.Argument(help="Strategy; default: every one.")] = None,
    stream: Annotated[
        str | None,
        typer.Option(
            "--stream", "-t", help="Only this stream (one without recipes: the fallback)."
        ),
    ] = None,
    every_field: Annotated[
        bool, typer.Option("--all", help="Every Config field, defaults marked with a dot.")
    ] = False,
) -> None:
    """Print reference recipes: each (strategy, stream, variant)'s settings and their source."""
    from cilbench.api import STRATEGIES
    from cilbench.engine.recipe_views import view_recipes

    names = [strategy] if strategy else STRATEGIES.names()
    for name in names:
        cls = STRATEGIES.get(name)
        if cls.deprecated and not strategy:
            continue  # a name kept for stored results: its recipes are its successor's
        for stream_name in [stream] if stream else list(getattr(cls, "recipes", {})):
            origin, fallback, views = view_recipes(name, stream_name, every_field)
            title = f"{name} on {stream_name}" + (f" (recipes of {origin})" if fallback else "")
            columns = ["recipe", "variant", "settings", "backbone", "augmentation", "source"]
            rows = [
                [
                    view.name,
                    view.variant,
                    "\n".join(view.settings),
                    "\n".join(view.backbone),
                    view.augmentation,
                    "\n".join(view.source),
                ]
                for view in views
            ]
            show_table(console.stdout, title, columns, rows)
            if fallback:
                console.stdout.print(f"[yellow]{escape(fallback)}[/]")
            elif not views:
                console.stdout.print(
                    f"{escape(name)} has no recipes: it runs with its Config defaults."
                )


@console.user_errors
def profile_command(
    context: typer.Context,
    name: Annotated[str, typer.Argument(help="Which benchmark (see `cilbench ls profiles`).")] = (
        "pipeline"
    ),
    strategy: StrategyOpt = "nmc",
    stream: StreamOpt = "split-fashion-mnist-mini",
    backbone: BackboneOpt = None,
    assignments: SetOpt = None,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile_models: CompileOpt = False,
    decode: DecodeOpt = "cpu",
    batch_size: BatchOpt = 128,
    workers: Annotated[
        int | None, typer.Option(help="Data-loader processes (default: one per core).")
    ] = None,
    synthetic_jpegs: Annotated[
        int,
        typer.Option(
            help="First write N photo-like JPEGs in the file-based stream's layout under "
            "--data-root (a temporary folder if not given) and profile on them."
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print figures as JSON.")] = False,
) -> None:
    """Measure costs side by side in one run (default: bare forward vs cold vs warm cache)."""
    from cilbench.core.config import NonNegative, check_value
    from cilbench.profiles import IGNORED_OPTIONS, PROFILES
    from cilbench.profiles.fixtures import synthetic_data_root

    check_value(synthetic_jpegs, NonNegative(), key="--synthetic-jpegs", what="profile option")
    profile = PROFILES.get(name)
    console.refuse_given(context, IGNORED_OPTIONS[name], f"by `profile {name}`")
    with contextlib.ExitStack() as stack:
        if synthetic_jpegs > 0:
            root = synthetic_data_root(stream, data_root, synthetic_jpegs)
            data_root = stack.enter_context(root)
        spec = spec_from_options(
            strategy, stream, backbone, 0, assignments, data_root, device, batch_size,
            num_workers=workers, precision=precision, compile=compile_models, decode=decode,
        )  # fmt: skip
        figures = profile(spec)
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    rows = [[label, str(value)] for label, value in figures.items()]
    columns = ["measurement", "figure"]
    show_table(console.stdout, f"cilbench profile {name}", columns, rows, right_aligned=["figure"])
