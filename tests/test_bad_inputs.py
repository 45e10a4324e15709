"""Every bad input of the command line and the Python API ends in one clear message, before work.

Each case is a command line (a list, run through typer's CliRunner) or `RunSpec` arguments (a
dict, passed to `cilbench.run`), with a text the message must contain: the key at fault. A case
passes when the command exits with status 2 (the API raises a CilbenchError), no traceback is
printed, and neither the output folder nor the feature cache has been created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cilbench.backbones.model import create_backbone
from cilbench.backbones.spec import BackboneSpec
from cilbench.benchmarks.synthetic import Synthetic
from cilbench.cli.app import app
from cilbench.core.errors import CilbenchError
from cilbench.engine.loop import prepare, run
from cilbench.engine.spec import RunSpec

HERE = str(Path(__file__))  # an existing file that is not a weight file
SYN = ["--stream", "synthetic"]


def _set(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


RUN_CASES: list[tuple[list[str], str]] = [
    # run options
    (["--batch-size", "0"], "batch_size"),
    (["--batch-size", "-1"], "batch_size"),
    (["--batch-size", "abc"], "--batch-size"),
    (["--workers", "-1"], "workers"),
    (["--workers", "two"], "--workers"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**32)], "seed"),
    (["--seed", "1.5"], "--seed"),
    (["--device", "cuda"], "device"),
    (["--device", "cuda:3"], "device"),
    (["--device", "gpu"], "device"),
    (["--device", "mps"], "device"),
    (["--no-cache", "--cache-dir", "elsewhere"], "--cache-dir"),
    (["--resume"], "resume"),
    (["--frobnicate"], "--frobnicate"),
    # names
    (["--strategy", "simplecl"], "simplecl"),
    (["--stream", "synthetc"], "synthetc"),
    (["--backbone", "tiny-vit"], "tiny-vit"),
    (["--backbone", "vit_base_patch16_224"], "vit_base_patch16_224"),
    (["--backbone", "file:/no/such/weights.safetensors@vit_tiny_patch16_224"], "weights"),
    (["--backbone", "file:weights.safetensors"], "file:"),
    (["--backbone", f"file:{HERE}@not_a_timm_model"], "not_a_timm_model"),
    # --set syntax and keys
    (_set("lr"), "lr"),
    (_set("=3"), "--set"),
    (_set("epochs=3"), "epochs"),
    (_set("stream.incremnt=2"), "incremnt"),
    (_set("backbone.mean=0.5"), "mean"),
    # stream options
    (_set("stream.increment=two"), "increment"),
    (_set("stream.increment=0"), "increment"),
    (_set("stream.increment=-2"), "increment"),
    (_set("stream.increment=3"), "increment"),
    (_set("stream.init_classes=-1"), "init_classes"),
    (_set("stream.init_classes=11"), "init_classes"),
    (_set("stream.class_order=random"), "class_order"),
    (_set("stream.class_order=pycil-x"), "class_order"),
    (["--stream", "split-fashion-mnist", *_set("stream.download=maybe")], "download"),
    ([*SYN, *_set("stream.num_classes=0")], "num_classes"),
    ([*SYN, *_set("stream.train_per_class=0")], "train_per_class"),
    ([*SYN, *_set("stream.test_per_class=0")], "test_per_class"),
    ([*SYN, *_set("stream.image_size=0")], "image_size"),
    ([*SYN, *_set("stream.domains=0")], "domains"),
    ([*SYN, *_set("stream.noise=-1")], "noise"),
    ([*SYN, *_set("stream.data_seed=-1")], "data_seed"),
    ([*SYN, *_set("stream.scenario=task-incremental")], "scenario"),
    (["--stream", "split-imagenet-r", *_set("stream.decoded_size=-1")], "decoded_size"),
    (["--stream", "split-imagenet-r", *_set("stream.split_seed=-1")], "split_seed"),
    (["--stream", "core50", *_set("stream.run=10")], "run"),
    # backbone settings
    (_set("backbone.image_size=0"), "image_size"),
    (_set("backbone.image_size=-32"), "image_size"),
    (_set("backbone.image_size=big"), "image_size"),
    (_set("backbone.crop_pct=0"), "crop_pct"),
    (_set("backbone.crop_pct=1.5"), "crop_pct"),
    (_set("backbone.crop_pct=nan"), "crop_pct"),
    (_set("backbone.interpolation=cubic"), "interpolation"),
    (_set("backbone.normalization=imagnet"), "normalization"),
    # strategy hyper-parameters: DKVB
    *(
        (["--strategy", "dkvb", *SYN, *_set(pair)], pair.split("=")[0])
        for pair in [
            "top_k=0",
            "top_k=17",  # more than the synthetic recipe's 16 keys per codebook
            "keys_per_codebook=0",
            "num_codebooks=-1",
            "key_dim=0",
            "epochs=-1",
            "epochs=0",
            "lr=0",
            "lr=-0.1",
            "batch_size=0",
            "decay=1.5",
            "label_smoothing=1",
            "grad_clip=0",
            "optimizer=rmsprop",
            "values_init=ones",
            "init_epochs=-1",
            "key_init_stream=nope",
        ]
    ),
    # finetune (the shared training settings)
    *(
        (["--strategy", "finetune", *SYN, *_set(pair)], pair.split("=")[0])
        for pair in [
            "epochs=0",
            "batch_size=-4",
            "lr=0",
            "momentum=1.5",
            "weight_decay=-1",
            "schedule=linear",
            "milestones=a,b",
            "milestones=-1",
            "gamma=0",
            "num_workers=-1",
            "grad_clip=-1",
            "train_backbone=perhaps",
            "backbone_lr_scale=-1",
            "min_lr=-1",
        ]
    ),
    # first-session strategies, SLCA, Avalanche baselines
    *(
        (["--strategy", strategy, *SYN, *_set(pair)], pair.split("=")[0])
        for strategy, pair in [
            ("adam", "peft=none"),
            ("adam", "adapter_bottleneck=0"),
            ("adam", "vpt_tokens=0"),
            ("adam", "lora_rank=0"),
            ("adam", "adapter_dropout=1"),
            ("adam", "epochs=0"),
            ("ranpac", "projection_dim=-1"),
            ("ranpac", "projection_dim=0"),
            ("ranpac", "ridges=0,1"),
            ("ranpac", "validation_fraction=1"),
            ("ranpac", "validation_fraction=0"),
            ("slca", "ca_epochs=-1"),
            ("slca", "ca_samples_per_class=0"),
            ("slca", "logit_temperature=0"),
            ("slca", "covariance_ridge=-1"),
            ("slca", "ca_lr=0"),
            ("avalanche-replay", "mem_size=0"),
            ("avalanche-ewc", "ewc_lambda=-1"),
            ("avalanche-ewc", "ewc_mode=offline"),
            ("avalanche-lwf", "lwf_temperature=0"),
            ("avalanche-der", "der_alpha=-1"),
        ]
    ),
]

OTHER_CASES: list[tuple[list[str], str]] = [
    (["profile", "dkvb", "--strategy", "nmc"], "--strategy"),
    (["profile", "slca", "-s", "slca"], "--strategy"),
    (["profile", "first-session", "--strategy", "adam"], "--strategy"),
    (["profile", "decoded-cache", "--stream", "synthetic"], "--stream"),
    (["profile", "decoded-cache", "--batch-size", "0"], "batch_size"),
    (["profile", "first-session", "--set", "foo=1"], "foo"),
    (["profile", "slca", "--decode", "gpu"], "--decode"),
    (["profile", "pipeline", "--decode", "gpu"], "--decode"),
    (["profile", "decoded-cache", "--compile"], "--compile"),
    (["profile", "nope"], "nope"),
    (["profile", "pipeline", "--device", "cuda:7"], "device"),
    (["ls", "strategy"], "strategy"),
    (["data", "decode", "split-imagenet-r", "--size", "0"], "--size"),
    (["data", "decode", "split-imagenet-r", "--size", "-3"], "--size"),
    (["data", "decode", "synthetic"], "decoded_size"),
    (["data", "fetch", "nope"], "nope"),
]

TINY = BackboneSpec("my-tiny", "vit_tiny_patch16_224", "random:0", image_size=32, crop_pct=1.0)
API_CASES: list[tuple[dict[str, Any], str]] = [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": "8"}, "batch_size"),
    ({"num_workers": -1}, "num_workers"),
    ({"seed": 2**40}, "seed"),
    ({"seed": True}, "seed"),
    ({"device": "cuda"}, "device"),
    ({"out_dir": "runs"}, "out_dir"),
    ({"strategy": "nope"}, "nope"),
    ({"stream": 42}, "stream"),
    ({"stream": Synthetic(num_classes=0)}, "num_classes"),
    ({"stream": Synthetic(), "overrides": {"stream.increment": "0"}}, "increment"),
    ({"stream": Synthetic().build(None), "overrides": {"stream.increment": "1"}}, "increment"),
    ({"stream": Synthetic().build(None)}, "backbone"),
    ({"backbone": BackboneSpec("b", "not_a_model", "random:0")}, "not_a_model"),
    ({"backbone": BackboneSpec("b", "vit_tiny_patch16_224", "http://x")}, "weights"),
    ({"backbone": BackboneSpec("b", "vit_tiny_patch16_224", "random:x")}, "random"),
    ({"backbone": BackboneSpec("b", "vit_tiny_patch16_224", "hub", image_size=0)}, "image_size"),
    ({"backbone": TINY, "overrides": {"backbone.crop_pct": "2"}}, "crop_pct"),
    (
        {"backbone": create_backbone("tiny-vit-random"), "overrides": {"backbone.image_size": "8"}},
        "backbone.",
    ),
    ({"backbone": create_backbone("tiny-vit-random"), "device": "cpu:0"}, "device"),
    ({"overrides": {"lr": "0"}}, "lr"),
    ({"strategy": "finetune", "overrides": {"lr": -1}}, "lr"),
]

CASES = [*((["run", *args], key) for args, key in RUN_CASES), *OTHER_CASES, *API_CASES]


def _id(case: tuple[Any, str]) -> str:
    given, _ = case
    if isinstance(given, list):
        return " ".join(given)
    plain = (str, int, float, bool, dict)
    return repr({k: v if isinstance(v, plain) else type(v).__name__ for k, v in given.items()})


@pytest.mark.parametrize(("given", "key"), CASES, ids=[_id(c) for c in CASES])
def test_bad_input_fails_cleanly_before_work(
    given: list[str] | dict[str, Any], key: str, tmp_path: Path, isolated_cache: Path
):
    out = tmp_path / "runs"
    if isinstance(given, list):
        args = [*given, "--out", str(out)] if given[0] == "run" else given
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        message = result.output
    else:
        with pytest.raises(CilbenchError) as error:
            run(RunSpec(**{"out_dir": out, "cache_dir": isolated_cache, **given}))
        message = str(error.value)
    assert "Traceback" not in message
    assert key in " ".join(message.split()), message
    assert not out.exists() and not isolated_cache.exists()


def test_the_list_is_broad():
    assert len(CASES) >= 100


def test_prepare_checks_before_building_the_stream(monkeypatch: pytest.MonkeyPatch):
    """A bad strategy value fails before any stream data is read."""

    def build(self, data_root):
        raise AssertionError("the stream was built before the settings were checked")

    monkeypatch.setattr(Synthetic, "build", build)
    with pytest.raises(CilbenchError, match="'lr' must be > 0"):
        prepare(RunSpec(strategy="finetune", stream="synthetic", overrides={"lr": "0"}))
