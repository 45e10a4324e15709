"""`cilbench recipes`: each recipe resolved exactly as a run would resolve it, shown as text."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from cilbench.api import STRATEGIES
from cilbench.engine.recipes import RECIPE_KEY, Recipe, candidates
from cilbench.engine.spec import RunSpec, resolve_run


@dataclass(frozen=True)
class RecipeView:
    """One recipe as `cilbench recipes` shows it: resolved values, as text."""

    name: str
    variant: str
    settings: list[str]
    """key=value with the value the run would use (strategy keys, then stream.*)."""
    backbone: list[str]
    """The backbone tag, then its preprocessing settings."""
    augmentation: str
    source: list[str]
    """Repository@commit, file, paper table, notes; or why there is none."""


def view_recipes(
    strategy: str, stream: str, every_field: bool = False
) -> tuple[str, str, list[RecipeView]]:
    """(stream the recipes were written for, fallback reason or '', views) for the CLI.

    Each recipe is resolved exactly as a run would resolve it (`engine.spec.resolve_run`); the views
    list the fields the recipe sets, or with `every_field` every Config field (defaults marked).
    """
    strategy_cls = STRATEGIES.get(strategy)
    origin, found, fallback = candidates(strategy, strategy_cls, stream)
    variant_key = getattr(strategy_cls, "variant_key", None)
    views = []
    for recipe in found:
        variant = recipe.settings.get(variant_key) if variant_key else None
        overrides: dict[str, Any] = {RECIPE_KEY: recipe.name}
        if variant_key and variant is not None:
            overrides[variant_key] = variant
        run = resolve_run(RunSpec(strategy=strategy, stream=stream, overrides=overrides))
        layers = run.recipe.sections()
        names = _field_names(run.config) if every_field else list(layers["strategy"])
        settings = [
            f"{k}={_text(getattr(run.config, k))}" + ("" if k in layers["strategy"] else " ·")
            for k in names
        ]
        settings += [f"stream.{k}={_text(getattr(run.builder, k))}" for k in layers["stream"]]
        backbone = [f"{k}={_text(v)}" for k, v in run.backbone_settings.items()]
        views.append(
            RecipeView(
                name=recipe.name,
                variant="" if variant is None else str(variant),
                settings=settings or ["(the Config defaults)"],
                backbone=[str(run.backbone), *backbone],
                augmentation=_augmentation_text(run.augmentation),
                source=_source_lines(recipe),
            )
        )
    return origin, fallback, views


def _field_names(config: Any) -> list[str]:
    return [f.name for f in fields(config)] if is_dataclass(config) else []


def _text(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _augmentation_text(augmentation: Any) -> str:
    a = augmentation
    crop = f"RRC scale {_text(a.scale)}" if a.crop == "random-resized" else "centre crop"
    parts = [crop, a.interpolation, "flip" if a.flip else "no flip"]
    if a.brightness:
        parts.append(f"brightness {a.brightness:.3g}")
    return f"{a.preset}: " + ", ".join(parts)


def _source_lines(recipe: Recipe) -> list[str]:
    source = recipe.source
    lines = [f"{source.repo}@{source.commit[:10]}", source.file] if source else []
    if source and source.table:
        lines.append(source.table)
    if recipe.notes:
        lines.append(recipe.notes)
    return lines or ["cilbench's own settings"]
