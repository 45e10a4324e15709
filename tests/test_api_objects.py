"""`run()` takes stream and backbone objects as well as names; local weight files as backbones."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from cilbench import BACKBONES, RunSpec, create_backbone, run
from cilbench.benchmarks.synthetic import Synthetic
from cilbench.data.downloads import sha256_file


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


def test_backbone_from_a_local_weight_file(tmp_path: Path):
    """`file:PATH@ARCHITECTURE` loads the file's tensors into that timm model, without pickle."""
    source = timm.create_model("test_vit", num_classes=0).eval()
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    images = torch.rand(2, 3, 160, 160)
    for name in (f"file:{path}@test_vit", f"file:{tmp_path / 'w.pt'}@test_vit"):
        backbone = create_backbone(name)
        assert backbone.spec.architecture == "test_vit"
        loaded = backbone.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
        with torch.no_grad():  # channels-last on our side: equal up to float rounding
            torch.testing.assert_close(backbone.forward_features(images), source(images))
    assert create_backbone(f"file:{path}@test_vit").weight_digest == sha256_file(path)
