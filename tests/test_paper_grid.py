"""The paper grid: the committed grid file covers every recipe on the standard streams, runs end to
end on exact-format fixtures with the tiny backbone, and its dry run prices the runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from stream_fixtures import accept_cifar_fixture, write_cifar100
from typer.testing import CliRunner

from cilbench.cli.app import app
from cilbench.engine.paper_grid import STREAM_SIZES, cost_model, forward_gflops, load_grid

PAPER_GRID = Path(__file__).parents[1] / "leaderboards" / "paper-grid.toml"


def test_the_paper_grid_lists_every_recipe_on_the_standard_streams_with_3_seeds():
    from cilbench.api import STRATEGIES
    from cilbench.engine.recipes import recipes_of

    grid = load_grid(PAPER_GRID)
    assert grid.seeds == [0, 1, 2]
    listed = {(s, t, tuple(sorted(a.items()))) for s, t, a in grid.runs}
    for stream in STREAM_SIZES:
        for name in STRATEGIES.names():
            cls = STRATEGIES.get(name)
            recipes = recipes_of(cls, stream)
            if not recipes:
                continue
            key = cls.variant_key
            for recipe in (r for r in recipes if r.name == recipes[0].name):
                wanted = {"recipe": recipes[0].name}
                if key and key in recipe.settings:
                    wanted[key] = str(recipe.settings[key])
                assert (name, stream, tuple(sorted(wanted.items()))) in listed, (name, stream)


def test_forward_flops_of_vit_b16_are_the_published_17_6_gmacs():
    assert forward_gflops("vit_base_patch16_224", (), 224) == pytest.approx(2 * 17.6, rel=0.01)


def test_the_cost_model_counts_passes_by_hand():
    class Frozen:
        predicts_from_features = True

    class Trained:
        predicts_from_features = False

    class Config:
        epochs = 2

    class Peft:
        epochs, peft = 2, "adapter"

    sizes = (100, 20, 4)
    assert cost_model("nmc", Frozen(), object(), sizes) == (0, 120.0)
    # 2 epochs x 100 images x 3 + the seen test sets after each of 4 tasks (20 x 5 / 2)
    assert cost_model("slca", Trained(), Config(), sizes) == (2, 600 + 50)
    assert cost_model("joint", Trained(), Config(), sizes) == (2, 600 * 2.5 + 50)
    # extraction 120 + first task 25 images x 2 epochs x 3 + adapted branch 120
    assert cost_model("adam", Frozen(), Peft(), sizes) == (2, 120 + 150 + 120)
    # an adapter set trained on every task: 600 + the seen test sets 50 + its features 120
    assert cost_model("mos", Frozen(), Peft(), sizes) == (2, 600 + 50 + 120)
    # DER: each task's 25 images x 2 epochs: its new backbone (x 3) and t frozen ones (x 1), so
    # 50 x (3 + 0 + 3 + 1 + 3 + 2 + 3 + 3) = 900; after task t, (t + 1) x 5 test images through
    # t + 1 backbones: 5 x (1 + 4 + 9 + 16) = 150
    assert cost_model("der", Trained(), Config(), sizes) == (2, 900 + 150)
    # DGR is priced as iCaRL is (no case of its own): the whole network trained, 2 epochs x 100
    # images x 3, + the seen test sets 50; neither prices the frozen teacher's forward
    assert cost_model("dgr", Trained(), Config(), sizes) == (2, 600 + 50)
    assert cost_model("dgr", Trained(), Config(), sizes) == cost_model(
        "icarl", Trained(), Config(), sizes
    )

    class Foster:
        first_epochs, epochs, compression_epochs = 2, 1, 3

    # FOSTER: task 0's 25 images x 2 epochs x 3 = 150; each of 3 later tasks 25 x (1 x (3 + 1)
    # + 3 x (3 + 2)) = 475; tests after task t: 5 (t + 1) images through 1, then 2 backbones:
    # 5 x (1 + 2 x (2 + 3 + 4)) = 95
    assert cost_model("foster", Trained(), Foster(), sizes) == (1, 150 + 3 * 475 + 95)

    class Coil:
        epochs, batch_size, memory_size, resolve_every, old_means = 2, 4, 7, 3, "training"

    # Coil: task 0's 25 images x 2 epochs x 3 = 150; each of 3 later tasks 25 + 7 = 32 images x
    # 2 epochs x (3 + 1 old network) = 256, plus epoch 1's ceil(8 steps / 3) = 3 plans of 32 = 96;
    # prospective plans before tasks 1-3: 25 x (2 + 3 + 4) = 225; herding 100; tests 50
    assert cost_model("coil", Trained(), Coil(), sizes) == (2, 150 + 3 * 352 + 225 + 100 + 50)
    Coil.old_means = "exemplars"  # the memory and the new task, 32 a plan
    assert cost_model("coil", Trained(), Coil(), sizes) == (2, 150 + 3 * 352 + 96 + 100 + 50)

    class Memo:
        first_epochs, epochs, deep_blocks = 2, 1, 3

    # MEMO, deep stacks 3 of 12 blocks (f = 1/4): task 0 trains everything, 25 x 2 x 3 = 150;
    # task t: 25 x (shared 3/4 + t frozen stacks t/4 + the new one 3 x 1/4) = 43.75, 50, 56.25;
    # tests after task t: 5 (t + 1) images, shared 3/4 + (t + 1)/4 each:
    # 5 x (1 x 1 + 2 x 1.25 + 3 x 1.5 + 4 x 1.75) = 75
    assert cost_model("memo", Trained(), Memo(), sizes) == (1, 150 + 43.75 + 50 + 56.25 + 75)


def _grid(path: Path) -> Path:
    path.write_text(
        "seeds = [0]\n\n"
        '[[runs]]\nstrategy = "nmc"\nstream = "split-cifar100"\nset = ["recipe=paper"]\n\n'
        '[[runs]]\nstrategy = "simplecil"\nstream = "split-cifar100"\nset = ["recipe=paper"]\n'
    )
    return path


def test_sweep_grid_dry_runs_then_runs_on_the_cifar_fixture(tmp_path: Path, monkeypatch):
    root = write_cifar100(tmp_path / "data", train_per_class=2, test_per_class=1)
    accept_cifar_fixture(monkeypatch, root)
    grid = _grid(tmp_path / "grid.toml")
    runner = CliRunner()
    dry = runner.invoke(app, ["sweep", "--grid", str(grid), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    text = " ".join(dry.stdout.split())
    assert "dry run: 2 runs" in text and "total: 2 runs," in text and "GPU-hours" in text
    assert "H100 SXM, 989 TFLOP/s dense bf16 peak, assumed 40% sustained" in text
    assert "split-cifar100 50,000 train / 10,000 test, 10 tasks" in text
    args = ["sweep", "--grid", str(grid), "--backbone", "tiny-vit-random", "--data-root"]
    args += [str(root), "--out", str(tmp_path / "runs"), "--workers", "1", "--device", "cpu"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.count("│ ran ") == 2
    results = sorted((tmp_path / "runs").rglob("result.json"))
    assert len(results) == 2
    again = runner.invoke(app, args)
    assert again.stdout.count("│ skipped ") == 2
    refused = runner.invoke(app, ["sweep", "--grid", str(grid), "--seeds", "1", "--dry-run"])
    assert refused.exit_code == 2 and "--seeds" in refused.output
