"""`run()` takes stream and backbone objects as well as registered names, with the same result."""

from __future__ import annotations

from pathlib import Path

from cilbench import BACKBONES, RunSpec, create_backbone, run
from cilbench.benchmarks.synthetic import Synthetic


def test_objects_and_names_give_the_same_run(tmp_path: Path):
    def matrix(**given) -> list:
        spec = RunSpec(strategy="nmc", out_dir=tmp_path / "runs", cache_dir=None, **given)
        return run(spec).accuracy_matrix

    by_name = matrix(stream="synthetic", backbone="tiny-vit-random")
    assert by_name == matrix(stream=Synthetic(), backbone=BACKBONES.get("tiny-vit-random"))
    built = Synthetic().build(None)
    assert by_name == matrix(stream=built, backbone=create_backbone("tiny-vit-random"))
    # stream.* options apply to a builder object: 6 classes in tasks of 3 instead of 2
    three_tasks = matrix(stream=Synthetic(), overrides={"stream.increment": "3"})
    assert len(by_name) == 3 and len(three_tasks) == 2
