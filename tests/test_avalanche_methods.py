"""The avalanche adapter: avalanche's templates on cilbench experiences, cilbench's evaluator."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cilbench.api import STRATEGIES
from cilbench.core.errors import CilbenchError
from cilbench.engine.loop import run
from cilbench.engine.spec import RunSpec
from cilbench.testing import make_strategy, synthetic_stream, tiny_backbone

pytest.importorskip("avalanche")

METHODS = ["avalanche-ewc", "avalanche-lwf", "avalanche-replay", "avalanche-dark-er"]


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream()


def test_registered_with_the_exemplar_flag():
    flags = {name: STRATEGIES.get(name).uses_exemplars for name in METHODS}
    assert flags == {
        "avalanche-ewc": False,
        "avalanche-lwf": False,
        "avalanche-replay": True,
        "avalanche-dark-er": True,
    }


def test_importing_the_adapter_does_not_import_avalanche():
    import subprocess
    import sys

    code = (
        "import sys, cilbench.strategies.avalanche_methods; "
        "print(any(m == 'avalanche' or m.startswith('avalanche.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_replay_result_records_exemplars_and_cost(tmp_path: Path):
    spec = RunSpec(
        strategy="avalanche-replay",
        stream="synthetic",
        out_dir=tmp_path,
        cache_dir=None,
        overrides={"mem_size": "20"},
    )
    result = run(spec)
    assert result.flags["uses_exemplars"] is True
    assert result.flags["exemplar_budget"] == "20 total, random, balanced over experiences"
    size = tiny_backbone().preprocessing.image_size
    assert result.cost["exemplar_images"] == 20  # the buffer filled up after the first task
    assert result.cost["exemplar_bytes"] == 20 * 3 * size * size
    assert (
        result.cost["trainable_parameters"]
        == sum(p.numel() for p in tiny_backbone().model.parameters())
        + tiny_backbone().feature_dim * 6
        + 6
    )
    assert len(result.accuracy_matrix) == 3 and result.complete


def test_der_buffer_keeps_old_classes_with_logits_of_test_preprocessed_images(stream):
    strategy = make_strategy("avalanche-dark-er", tiny_backbone(), stream, mem_size=12)
    for experience in stream.experiences[:2]:
        strategy.train_experience(experience)
    buffer = strategy.template.storage_policy.buffer
    assert len(buffer) == 12 == strategy.exemplar_images()
    assert sorted({int(y) for y in buffer.targets}) == [0, 1, 2, 3]
    # Logits of experience 1's classes were stored after training on it, from eval-group
    # (test-preprocessed) images: the current model must reproduce them from the same images.
    new = [i for i, y in enumerate(buffer.targets) if int(y) in (2, 3)]
    assert new
    images = torch.stack([buffer.eval()[i][0] for i in new])
    stored = torch.stack([buffer.eval()[i][3] for i in new])
    expected_size = strategy.backbone.preprocessing.image_size
    assert images.dtype == torch.uint8 and images.shape[-1] == expected_size
    with torch.no_grad():
        logits = strategy.network(strategy.backbone.prepare(images))
    assert torch.allclose(logits, stored, atol=1e-4)


def test_global_rngs_are_left_untouched(stream):
    strategy = make_strategy("avalanche-replay", tiny_backbone(), stream, mem_size=12)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    strategy.train_experience(stream.experiences[0])
    strategy.train_experience(stream.experiences[1])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_ewc_importances_cover_the_trained_backbone(stream):
    strategy = make_strategy("avalanche-ewc", tiny_backbone(), stream)
    strategy.train_experience(stream.experiences[0])
    plugin = next(p for p in strategy.template.plugins if type(p).__name__ == "EWCPlugin")
    importances = plugin.importances[0]
    names = {name for name, _ in strategy.model.named_parameters()}
    assert set(importances) == names
    assert any(
        float(data.data.abs().sum()) > 0 for name, data in importances.items() if "backbone" in name
    )


def test_resumed_state_predicts_but_refuses_to_train_on(stream):
    strategy = make_strategy("avalanche-lwf", tiny_backbone(), stream)
    strategy.train_experience(stream.experiences[0])
    restored = make_strategy("avalanche-lwf", tiny_backbone(), stream)
    restored.load_state_dict(strategy.state_dict())
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(restored.predict(batch), strategy.predict(batch))
    with pytest.raises(CilbenchError, match="resumed run"):
        restored.train_experience(stream.experiences[1])


def test_per_group_learning_rates_survive_avalanches_optimizer_updates(stream):
    strategy = make_strategy("avalanche-lwf", tiny_backbone(), stream, backbone_lr_scale=0.1)
    strategy.train_experience(stream.experiences[0])
    strategy.train_experience(stream.experiences[1])
    groups = strategy.template.optimizer.param_groups
    lr = strategy.config.lr
    by_param = {id(p): g["initial_lr"] for g in groups for p in g["params"]}
    assert {by_param[id(p)] for p in strategy.network.heads.parameters()} == {lr}
    assert {by_param[id(p)] for p in strategy.network.backbone.parameters()} == {lr * 0.1}


def test_epoch_losses_are_the_training_cross_entropy_of_each_experience(stream):
    """At lr 1e-12 nothing moves, so every epoch's reported loss is the cross-entropy of the
    initial model on the (unaugmented) training images, computed here independently; the losses
    survive a checkpoint."""
    from cilbench.data.augment import resolve_augmentation

    backbone = tiny_backbone()
    none = resolve_augmentation({"preset": "none"})
    strategy = make_strategy(
        "avalanche-ewc", backbone, stream, lr=1e-12, epochs=2, augmentation=none
    )
    for experience in stream.experiences[:2]:
        strategy.train_experience(experience)
    assert strategy.report()["loss_classes"] == stream.info.num_classes
    report = strategy.report()["epoch_losses"]
    assert list(report) == ["0", "1"] and all(len(v) == 2 for v in report.values())
    transform = backbone.preprocessing.sample_transform()
    for index in (0, 1):
        train = stream.experiences[index].train
        images = torch.stack([transform(train.source.load(int(i))) for i in train.indices])
        with torch.no_grad():
            logits = strategy.model(images)
        expected = F.cross_entropy(logits, torch.as_tensor(train.labels)).item()
        assert report[str(index)] == pytest.approx([expected, expected], rel=1e-5)
    restored = make_strategy("avalanche-ewc", tiny_backbone(), stream)
    restored.load_state_dict(strategy.state_dict())
    assert restored.report()["epoch_losses"] == report


def test_a_diverging_loss_stops_with_a_clear_error(stream):
    from cilbench.learn.training import NonFiniteLossError

    strategy = make_strategy("avalanche-ewc", tiny_backbone(), stream, lr=1e30, epochs=2)
    with pytest.raises(NonFiniteLossError, match="AvalancheEWC: loss is"):
        strategy.train_experience(stream.experiences[0])


BOARD = Path(__file__).resolve().parents[1] / "leaderboards"


def test_avalanche_der_is_a_deprecated_alias_of_dark_experience_replay():
    old, new = STRATEGIES.get("avalanche-der"), STRATEGIES.get("avalanche-dark-er")
    assert issubclass(old, new) and old.Config is new.Config
    assert old.template_name == new.template_name == "DER"
    assert not new.deprecated
    message = old.deprecated
    assert "avalanche-der is Dark Experience Replay; it is now avalanche-dark-er" in message
    assert "`der` is Yan et al.'s DER" in message


def test_ls_shows_the_new_name_and_marks_the_old_one():
    from typer.testing import CliRunner

    from cilbench.cli.app import app

    listed = CliRunner().invoke(app, ["ls", "strategies"])
    assert listed.exit_code == 0, listed.output
    text = " ".join(listed.stdout.split())
    assert re.search(r"avalanche-dark-er\W+(description: )?Dark experience replay", text), text
    assert re.search(r"avalanche-der\W+(description: )?Deprecated name of avalanche-dark-er", text)
    recipes = CliRunner().invoke(app, ["recipes"])
    assert "avalanche-dark-er on synthetic" in recipes.stdout
    assert "avalanche-der on" not in recipes.stdout  # listed once, under the new name


def test_the_old_name_still_runs_warns_and_replays(tmp_path: Path, caplog):
    from typer.testing import CliRunner

    from cilbench.cli.app import app
    from cilbench.core.results import load_result

    runner = CliRunner()
    args = ["--strategy", "avalanche-der", "--stream", "synthetic", "--set", "mem_size=12"]
    with caplog.at_level(logging.WARNING):
        first = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "a"), "--json"])
    assert first.exit_code == 0, first.output
    assert "avalanche-der is Dark Experience Replay; it is now avalanche-dark-er" in caplog.text
    (path,) = (tmp_path / "a").rglob("result.json")
    stored = load_result(path)
    assert stored.config["strategy"] == "avalanche-der"
    assert stored.run_id.split("/")[1].startswith("avalanche-der-")
    replay = ["run", "--from", str(path), "--out", str(tmp_path / "b"), "--json"]
    same = runner.invoke(app, replay)
    assert same.exit_code == 0, same.output
    assert "metrics match the stored result exactly" in same.stderr
    _the_old_name_stays_on_a_board(path, tmp_path / "board")


def _the_old_name_stays_on_a_board(path: Path, root: Path) -> None:
    """A result stored under the deprecated name is still a board row, with dark ER's Config."""
    from cilbench.boards.leaderboard import add, aggregate, load_board
    from cilbench.core.results import load_result
    from cilbench.engine.spec import RunSpec, resolve_run

    add([path], root)
    (row,) = aggregate(load_board(root, "synthetic"))
    assert row.strategy == "avalanche-der"
    settings = resolve_run(RunSpec.from_record(load_result(path).config))
    assert type(settings.config).__name__ == "DarkERConfig"
