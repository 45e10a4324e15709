"""Options shared by several commands, and the run spec they describe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def folder_given(value: Path | None) -> Path | None:
    """Refuse a blank folder name (an empty CILBENCH_CACHE or CILBENCH_DATA, `--out ' '`): it
    would silently mean the current directory."""
    if value is not None and not str(value).strip():
        raise typer.BadParameter(
            f"{str(value)!r} is blank; give a folder (or unset the environment variable)."
        )
    return value


StrategyOpt = Annotated[str, typer.Option("--strategy", "-s", help="Registered strategy name.")]
StreamOpt = Annotated[str, typer.Option("--stream", "-t", help="Registered stream name.")]
BackboneOpt = Annotated[
    str | None,
    typer.Option(help="Preset or exact timm weight tag; default: the stream's backbone."),
]
SeedOpt = Annotated[int, typer.Option(help="Seed for every random choice of the strategy.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="key=value; strategy keys, stream.<option>, backbone.<setting>. Repeatable."
    ),
]
DataRootOpt = Annotated[
    Path | None,
    typer.Option(envvar="CILBENCH_DATA", help="Where data sets live.", callback=folder_given),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
PrecisionOpt = Annotated[
    str,
    typer.Option(help="Compute precision: auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16, fp16."),
]
DecodeOpt = Annotated[
    str,
    typer.Option(help="Where frozen extraction decodes JPEG files: cpu (workers) or gpu (CUDA)."),
]
CompileOpt = Annotated[
    bool,
    typer.Option(
        "--compile", help="torch.compile frozen extraction and training (same results; opt-in)."
    ),
]
BatchOpt = Annotated[int, typer.Option(help="Batch size for feature extraction and evaluation.")]
LogOpt = Annotated[
    list[str] | None,
    typer.Option("--log", help="Live logging: tensorboard, wandb, csv (repeatable) to <run>/logs."),
]
OutOpt = Annotated[Path, typer.Option(help="Results go to OUT/<stream>/<run>/.")]
CacheOpt = Annotated[
    Path | None,
    typer.Option(envvar="CILBENCH_CACHE", help="Feature cache folder.", callback=folder_given),
]


def spec_from_options(
    strategy: str,
    stream: str,
    backbone: str | None,
    seed: int,
    assignments: list[str] | None,
    data_root: Path | None,
    device: str,
    batch_size: int,
    **extra: Any,
) -> Any:
    """The `RunSpec` of the command-line options, checked before any work."""
    from cilbench.core.config import check, parse_assignments
    from cilbench.engine.spec import RunSpec

    spec = RunSpec(
        strategy=strategy,
        stream=stream,
        backbone=backbone,
        seed=seed,
        overrides=parse_assignments(assignments or []),
        data_root=data_root,
        device=device,
        batch_size=batch_size,
        **extra,
    )
    return check(spec, what="run option")  # profiles that never call prepare() check it too
