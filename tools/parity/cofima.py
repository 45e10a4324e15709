"""CoFiMA parity: LAMDA-PILOT's own `models/cofima.py` and cilbench's `cofima` on identical inputs.

Subcommands (see tools/parity/README.md):

  inputs  OUT                  fecam.py's images and ViT (vit.pt), plus a second seeded ViT
                               (vit1.pt) and two seeded heads (heads.pt) for the Fisher check
  fisher-pilot --pilot DIR ... PILOT's `getFisherDiagonal` + `interpolate_weights` -> a .pt file
  fisher-cilbench ...          cilbench's `diagonal_fisher` + `fisher_average` -> a .pt file
  pilot   --pilot DIR ...      run PILOT's CoFiMA learner (timm 0.6.x venv), print JSON
  cilbench ...                 run cilbench's cofima through cilbench.run, print JSON
  compare --pilot DIR ...      both checks, both sides (subprocesses): tables, Welch t-test

The Fisher check is deterministic: the same two backbones (vit.pt, vit1.pt), the same two heads
and the same unshuffled batches on both sides; it compares the backbone Fishers and the
Fisher-weighted average element by element. The trained check runs whole streams and compares
per-task accuracy over seeds (the head initialisation, data order and the alignment's Gaussian
samples come from torch's global RNG in PILOT and from the experience's generator in cilbench, so
no accuracy regime is identical). On PILOT's side only the backbone factory
(`utils.inc_net.get_backbone`: the small timm ViT loaded from vit.pt), the dataset lookup
(`utils.data_manager._get_idata`: the harness iData) and the loader worker count
(`models.cofima.num_workers = 0`) are replaced; nothing is copied from the reference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from fecam import ARCH, INCREMENT, VIT, drive_learner, harness_idata, make_inputs, run_strategy

FISHER_CLASSES, FISHER_BATCH, WEIGHT = 4, 16, 0.4
CLASSES_PER_STEP, TRAIN_PER_CLASS = INCREMENT, 30  # task 0, all of its training images


def write_inputs(out: Path) -> None:
    """fecam.py's inputs, a second ViT (seed 1) and two 2-class heads (numpy seed 2)."""
    import timm
    import torch

    make_inputs(out)
    torch.manual_seed(1)
    second = timm.create_model(ARCH, pretrained=False, num_classes=0, **VIT)
    torch.save(second.state_dict(), out / "vit1.pt")
    rng = np.random.default_rng(2)
    heads = {}
    for i in range(2):
        heads[f"{i}.weight"] = torch.tensor(rng.normal(0, 0.5, (INCREMENT, VIT["embed_dim"])))
        heads[f"{i}.bias"] = torch.tensor(rng.normal(0, 0.1, INCREMENT))
    torch.save({k: v.float() for k, v in heads.items()}, out / "heads.pt")


def small_vit(inputs: Path, name: str = "vit.pt") -> Any:
    """The parity ViT as timm's VisionTransformer (the running timm's), loaded from `name`
    (strict); timm 0.6's `vit_tiny_patch16_224` factory does not take a patch size."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(num_classes=0, **VIT)
    model.load_state_dict(torch.load(inputs / name, map_location="cpu"))
    model.out_dim = VIT["embed_dim"]
    return model.eval()


def _pilot_modules(pilot: Path, inputs: Path) -> tuple[Any, Any]:
    """PILOT's cofima and data_manager modules with the three replacements made."""
    sys.path.insert(0, str(pilot))
    import models.cofima as cofima
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net

    HarnessData = harness_idata(inputs)
    inc_net.get_backbone = lambda args, pretrained=False: small_vit(inputs)
    data_manager._get_idata = lambda name, args=None: HarnessData()
    cofima.num_workers = 0
    return cofima, data_manager


def _pilot_args(seed: int, **settings: Any) -> dict:
    import torch

    return {
        "prefix": "parity", "dataset": "harness", "memory_size": 0, "memory_per_class": 0,
        "fixed_memory": False, "shuffle": False, "init_cls": INCREMENT, "increment": INCREMENT,
        "model_name": "cofima", "backbone_type": "vit_base_patch16_224",
        "device": [torch.device("cpu")], "seed": seed, "weight_decay": 5e-4,
        "lrate_decay": 0.1, "ca_with_logit_norm": 0.1, "wt_lambda": WEIGHT, **settings,
    }  # fmt: skip


def fisher_pilot(pilot: Path, inputs: Path, out: Path) -> None:
    """PILOT's getFisherDiagonal on vit.pt then vit1.pt (same heads, same unshuffled batches of
    classes 0-3) and interpolate_weights between them; the backbone entries saved to `out`."""
    import torch
    from torch.utils.data import DataLoader

    cofima, data_manager = _pilot_modules(pilot, inputs)
    args = _pilot_args(
        0, batch_size=FISHER_BATCH, epochs=1, lrate=0.0, milestones=[], ca_epochs=0,
        fisher_weighting=True,
    )  # fmt: skip
    manager = data_manager.DataManager("harness", False, 0, INCREMENT, INCREMENT, args)
    learner = cofima.Learner(args)
    network = learner._network
    network.update_fc(INCREMENT)
    network.update_fc(INCREMENT)
    heads = torch.load(inputs / "heads.pt")
    with torch.no_grad():
        for i, head in enumerate(network.fc.heads):
            head[0].weight.copy_(heads[f"{i}.weight"])
            head[0].bias.copy_(heads[f"{i}.bias"])
    data = manager.get_dataset(np.arange(FISHER_CLASSES), source="train", mode="train")
    loader = DataLoader(data, batch_size=FISHER_BATCH, shuffle=False, num_workers=0)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    fishers, states = [], []
    for name in ("vit.pt", "vit1.pt"):
        network.backbone.load_state_dict(torch.load(inputs / name, map_location="cpu"))
        fishers.append(learner.getFisherDiagonal(loader, optimizer))
        states.append({k: v.clone() for k, v in network.state_dict().items()})
    merged = cofima.interpolate_weights(
        states[0], states[1], alpha=WEIGHT, fisher=True, fisher_mat=fishers
    )
    keep = [k for k in states[0] if k.startswith("backbone.")]
    torch.save(
        {
            "fisher0": {k[9:]: fishers[0][k] for k in keep},
            "fisher1": {k[9:]: fishers[1][k] for k in keep},
            "merged": {k[9:]: merged[k] for k in keep},
        },
        out,
    )


def fisher_cilbench(inputs: Path, out: Path) -> None:
    """cilbench's diagonal_fisher and fisher_average on the same backbones, heads and batches."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import SequentialSampler, TensorDataset

    from cilbench.backbones.model import create_backbone
    from cilbench.learn.fisher import diagonal_fisher, fisher_average
    from cilbench.learn.heads import HeadedNetwork

    network = HeadedNetwork(create_backbone(_backbone_spec(inputs)), True, False)
    heads = torch.load(inputs / "heads.pt")
    for i in range(2):
        head = network.heads.grow(INCREMENT, freeze_old=True)
        with torch.no_grad():
            head.weight.copy_(heads[f"{i}.weight"])
            head.bias.copy_(heads[f"{i}.bias"])
    data = np.load(inputs / "images.npz")
    chosen = data["train_y"] < FISHER_CLASSES  # class-sorted already, as PILOT's get_dataset
    images = torch.tensor(data["train_x"][chosen]).permute(0, 3, 1, 2).float().div(255)
    dataset = TensorDataset(images.sub(0.5).div(0.5), torch.tensor(data["train_y"][chosen]))
    dataset.sampler = lambda generator: SequentialSampler(dataset)  # type: ignore[attr-defined]
    network.eval()
    fishers, states = [], []
    for name in ("vit.pt", "vit1.pt"):
        network.backbone.load_state_dict(torch.load(inputs / name, map_location="cpu"))
        fishers.append(
            diagonal_fisher(
                lambda x, y: F.cross_entropy(network(x), y),
                dict(network.backbone.named_parameters()),
                dataset,
                lambda x: x,
                torch.Generator().manual_seed(0),
                batch_size=FISHER_BATCH,
                device=torch.device("cpu"),
                maximum=1e-4,
                num_workers=0,
            )
        )
        states.append({k: v.clone() for k, v in network.backbone.state_dict().items()})
    merged = fisher_average(states[0], states[1], fishers[0], fishers[1], WEIGHT)
    torch.save({"fisher0": fishers[0], "fisher1": fishers[1], "merged": merged}, out)


STEPS, STEP_LR, STEP_SCALE = 3, 0.05, 0.1


def stage1_pilot(pilot: Path, inputs: Path, out: Path) -> None:
    """PILOT's own `_stage1_training` for STEPS full-batch epochs of task 0 (one SGD step each,
    unshuffled), from vit.pt and head 0 of heads.pt; the trained network saved to `out`."""
    import torch
    from torch.utils.data import DataLoader

    cofima, data_manager = _pilot_modules(pilot, inputs)
    args = _pilot_args(
        0, batch_size=CLASSES_PER_STEP * TRAIN_PER_CLASS, epochs=STEPS, lrate=STEP_LR,
        bcb_lrscale=STEP_SCALE, milestones=[2], ca_epochs=0, fisher_weighting=True,
    )  # fmt: skip
    manager = data_manager.DataManager("harness", False, 0, INCREMENT, INCREMENT, args)
    learner = cofima.Learner(args)
    network = learner._network
    network.update_fc(INCREMENT)
    heads = torch.load(inputs / "heads.pt")
    with torch.no_grad():
        network.fc.heads[0][0].weight.copy_(heads["0.weight"])
        network.fc.heads[0][0].bias.copy_(heads["0.bias"])
    data = manager.get_dataset(np.arange(INCREMENT), source="train", mode="train")
    loader = DataLoader(data, batch_size=len(data), shuffle=False, num_workers=0)
    learner._stage1_training(loader, loader)
    state = network.state_dict()
    torch.save({k.replace("fc.heads.0.0.", "heads.0."): v for k, v in state.items()}, out)


def stage1_cilbench(inputs: Path, out: Path) -> None:
    """cilbench's slow learner (`SlowLearnerAlignment.train_new_task`) on the same data, weights,
    settings and steps."""
    import torch
    from torch.utils.data import SequentialSampler, TensorDataset

    from cilbench.backbones.model import create_backbone
    from cilbench.testing import make_strategy, synthetic_stream

    strategy: Any = make_strategy(
        "cofima", create_backbone(_backbone_spec(inputs)), synthetic_stream(),
        epochs=STEPS, batch_size=CLASSES_PER_STEP * TRAIN_PER_CLASS, lr=STEP_LR,
        backbone_lr_scale=STEP_SCALE, milestones=(2,), weight_decay=5e-4, gamma=0.1,
        fresh_final_norm=False, num_workers=0,
    )  # fmt: skip
    heads = torch.load(inputs / "heads.pt")
    head = strategy.network.heads.grow(INCREMENT)
    with torch.no_grad():
        head.weight.copy_(heads["0.weight"])
        head.bias.copy_(heads["0.bias"])
    data = np.load(inputs / "images.npz")
    chosen = data["train_y"] < INCREMENT
    images = torch.tensor(data["train_x"][chosen]).permute(0, 3, 1, 2).float().div(255)
    dataset = TensorDataset(images.sub(0.5).div(0.5), torch.tensor(data["train_y"][chosen]))
    dataset.sampler = lambda generator: SequentialSampler(dataset)  # type: ignore[attr-defined]
    strategy.train_new_task(dataset, lambda x: x, torch.Generator().manual_seed(0), 0)
    state = {f"backbone.{k}": v for k, v in strategy.network.backbone.state_dict().items()}
    state.update({f"heads.0.{k}": v for k, v in head.state_dict().items()})
    torch.save(state, out)


def _backbone_spec(inputs: Path) -> Any:
    from cilbench.backbones.spec import BackboneSpec

    return BackboneSpec(
        name="parity-vit", architecture=ARCH, weights=f"file:{inputs / 'vit.pt'}",
        model_kwargs=VIT, image_size=32, crop_pct=1.0, normalization="inception",
    )  # fmt: skip


def run_pilot(
    pilot: Path, inputs: Path, settings: dict, seed: int, new_head_weights: bool = False
) -> dict:
    """PILOT's CoFiMA learner over the npz stream, driven as trainer.py drives it; accuracy over
    the seen classes after each task (the learner's own `_eval_cnn`, top-1).

    `new_head_weights` (a diagnostic, not PILOT): the merged new head keeps its trained weights
    instead of `interpolate_weights`' Fisher x weights.
    """
    import torch

    cofima, data_manager = _pilot_modules(pilot, inputs)
    if new_head_weights:
        interpolate = cofima.interpolate_weights

        def keep_new_head(theta_0: dict, theta_1: dict, *args: Any, **kwargs: Any) -> dict:
            theta = interpolate(theta_0, theta_1, *args, **kwargs)
            return {k: theta_1[k] if k not in theta_0 else v for k, v in theta.items()}

        cofima.interpolate_weights = keep_new_head
    args = _pilot_args(
        seed, batch_size=settings["batch"], epochs=settings["epochs"], lrate=settings["lr"],
        bcb_lrscale=settings["backbone_lr_scale"], milestones=settings["milestones"],
        ca_epochs=settings["ca_epochs"], fisher_weighting=settings["fisher_weighting"],
    )  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = cofima.Learner(args)
    return {"side": "pilot", "seed": seed, "accuracy": drive_learner(learner, manager)}


def run_cilbench(inputs: Path, settings: dict, seed: int) -> dict:
    """cilbench's cofima through cilbench.run on the same stream, weights and settings."""
    overrides = {
        "epochs": settings["epochs"], "milestones": tuple(settings["milestones"]),
        "lr": settings["lr"], "backbone_lr_scale": settings["backbone_lr_scale"],
        "batch_size": settings["batch"], "ca_epochs": settings["ca_epochs"],
        "fisher_weighting": settings["fisher_weighting"], "new_model_weight": WEIGHT,
        "weight_decay": 5e-4, "gamma": 0.1, "logit_temperature": 0.1, "fisher_max": 1e-4,
        "fresh_final_norm": False, "augment.preset": "none", "recipe": "pilot",
    }  # fmt: skip
    accuracy = run_strategy(inputs, "cofima", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": accuracy}


def _fisher_table(pilot_file: Path, ours_file: Path) -> None:
    import torch

    ref, ours = torch.load(pilot_file), torch.load(ours_file)
    print("| tensor set | entries | identical | max abs diff | max value | capped at 1e-4 | NaN |")
    print("|---|---|---|---|---|---|---|")
    for part in ("fisher0", "fisher1", "merged"):
        a = torch.cat([ref[part][k].flatten().double() for k in sorted(ref[part])])
        b = torch.cat([ours[part][k].flatten().double() for k in sorted(ref[part])])
        assert sorted(ref[part]) == sorted(ours[part]), "different parameter names"
        capped = int((a == float(torch.tensor(1e-4))).sum()) if part != "merged" else "-"
        print(
            f"| {part} | {a.numel()} | {int((a == b).sum())} | {float((a - b).abs().max()):.3g} "
            f"| {float(a.abs().max()):.3g} | {capped} | {int(a.isnan().sum())} |"
        )


def fisher_check(args: argparse.Namespace, start: Any, finish: Any) -> None:
    """Both sides' Fisher and average into temporary files, then the table."""
    inputs = ["--inputs", str(args.inputs)]
    with tempfile.TemporaryDirectory() as scratch:
        ref, ours = Path(scratch) / "pilot.pt", Path(scratch) / "cilbench.pt"
        pilot_side = ["fisher-pilot", *inputs, "--pilot", str(args.pilot), "--out", str(ref)]
        runs = [
            start(args.pilot_python, pilot_side),
            start(sys.executable, ["fisher-cilbench", *inputs, "--out", str(ours)]),
        ]
        for process in runs:
            finish(process)
        _fisher_table(ref, ours)
    print(f"\n## slow learner: {STEPS} full-batch SGD steps on task 0, same start, same data")
    with tempfile.TemporaryDirectory() as scratch:
        ref, ours = Path(scratch) / "pilot.pt", Path(scratch) / "cilbench.pt"
        pilot_side = ["stage1-pilot", *inputs, "--pilot", str(args.pilot), "--out", str(ref)]
        runs = [
            start(args.pilot_python, pilot_side),
            start(sys.executable, ["stage1-cilbench", *inputs, "--out", str(ours)]),
        ]
        for process in runs:
            finish(process)
        _stage1_table(ref, ours, args.inputs)


def _stage1_table(pilot_file: Path, ours_file: Path, inputs: Path) -> None:
    import torch

    ref, ours = torch.load(pilot_file), torch.load(ours_file)
    assert sorted(ref) == sorted(ours), "different parameter names"
    start = {f"backbone.{k}": v for k, v in torch.load(inputs / "vit.pt").items()}
    start.update({f"heads.{k}": v for k, v in torch.load(inputs / "heads.pt").items()})
    print("| part | entries | max abs diff PILOT - cilbench | max abs change by training |")
    print("|---|---|---|---|")
    for part in ("backbone.", "heads.0."):
        keys = [k for k in sorted(ref) if k.startswith(part)]
        a, b, s0 = (torch.cat([d[k].flatten().double() for k in keys]) for d in (ref, ours, start))
        print(
            f"| {part[:-1]} | {a.numel()} | {float((a - b).abs().max()):.3g} | "
            f"{float((a - s0).abs().max()):.3g} |"
        )


def compare(args: argparse.Namespace) -> None:
    from scipy import stats

    here = Path(__file__).resolve()
    inputs = ["--inputs", str(args.inputs)]

    def start(python: str, command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [python, str(here), *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def finish(process: subprocess.Popen) -> str:
        out, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{process.args[2]} failed:\n{err.decode()[-3000:]}")
        return out.decode()

    if not args.skip_fisher:
        print("## Fisher and Fisher-weighted average: same backbones, heads and batches")
        fisher_check(args, start, finish)
    if args.seeds <= 0:
        return
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    settings = {
        "epochs": args.epochs, "lr": args.lr, "backbone_lr_scale": args.backbone_lr_scale,
        "batch": args.batch, "milestones": args.milestones, "ca_epochs": args.ca_epochs,
        "fisher_weighting": not args.no_fisher,
    }  # fmt: skip
    common = [*inputs, "--settings", json.dumps(settings)]
    print(f"\n## trained: {json.dumps(settings)}, seeds {seeds[0]}..{seeds[-1]} a side")
    runs_per_seed = []
    for seed in seeds:
        seeded = [*common, "--seed", str(seed)]
        pilot_side = ["pilot", *seeded, "--pilot", str(args.pilot)]
        runs = [start(args.pilot_python, pilot_side), start(sys.executable, ["cilbench", *seeded])]
        if args.diagnostic:
            runs.append(start(args.pilot_python, [*pilot_side, "--new-head-weights"]))
        runs_per_seed.append(
            [json.loads(finish(p).strip().splitlines()[-1])["accuracy"] for p in runs]
        )
    ref_acc, cil = np.array([r[0] for r in runs_per_seed]), np.array([r[1] for r in runs_per_seed])
    print("| task | PILOT mean ± sd | cilbench mean ± sd | Welch p |\n|---|---|---|---|")
    _welch_rows(ref_acc, cil)
    print("\nper seed PILOT:", ref_acc.round(2).tolist())
    print("per seed cilbench:", cil.round(2).tolist())
    if args.diagnostic:
        kept = np.array([r[2] for r in runs_per_seed])
        print("\n### diagnostic: PILOT with the merged new head kept at its trained weights")
        print("| task | PILOT (new head kept) mean ± sd | cilbench mean ± sd | Welch p |")
        print("|---|---|---|---|")
        _welch_rows(kept, cil)
        paired = [stats.ttest_rel(ref_acc[:, t], kept[:, t]).pvalue for t in range(1, 3)]
        print("\nper seed PILOT, new head kept:", kept.round(2).tolist())
        print("paired t-test PILOT vs PILOT new head kept, tasks 1, 2: p =", np.round(paired, 3))


def _welch_rows(reference: np.ndarray, ours: np.ndarray) -> None:
    """One table row per task: mean ± sd of each side and Welch's two-sided p."""
    from scipy import stats

    for t in range(reference.shape[1]):
        a, b = reference[:, t], ours[:, t]
        if a.std() == 0 and b.std() == 0:  # no spread on either side: the t-test is undefined
            p = 1.0 if a[0] == b[0] else 0.0
        else:
            p = stats.ttest_ind(a, b, equal_var=False).pvalue
        print(
            f"| {t} | {a.mean():.2f} ± {a.std(ddof=1):.2f} | {b.mean():.2f} ± "
            f"{b.std(ddof=1):.2f} | {p:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("inputs").add_argument("out", type=Path)
    names = ("fisher-pilot", "fisher-cilbench", "stage1-pilot", "stage1-cilbench", "pilot")
    for name in (*names, "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True)
        if name in ("fisher-pilot", "stage1-pilot", "pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name.startswith(("fisher", "stage1")):
            p.add_argument("--out", type=Path, required=True)
        if name in ("pilot", "cilbench"):
            p.add_argument("--settings", required=True, help="JSON, as compare writes it")
            p.add_argument("--seed", type=int, default=0)
        if name == "pilot":
            p.add_argument(
                "--new-head-weights", action="store_true", help="diagnostic: see run_pilot"
            )
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=5)
            p.add_argument("--first-seed", type=int, default=0)
            p.add_argument("--skip-fisher", action="store_true", help="trained check only")
            p.add_argument("--epochs", type=int, default=5)
            p.add_argument("--lr", type=float, default=0.1)
            p.add_argument("--backbone-lr-scale", type=float, default=0.1)
            p.add_argument("--batch", type=int, default=16)
            p.add_argument("--milestones", type=int, nargs="*", default=[4])
            p.add_argument("--ca-epochs", type=int, default=3)
            p.add_argument("--no-fisher", action="store_true", help="plain average")
            p.add_argument(
                "--diagnostic", action="store_true", help="also PILOT with the new head kept"
            )
    args = parser.parse_args()
    if args.command == "inputs":
        write_inputs(args.out)
    elif args.command == "fisher-pilot":
        fisher_pilot(args.pilot, args.inputs, args.out)
    elif args.command == "fisher-cilbench":
        fisher_cilbench(args.inputs, args.out)
    elif args.command == "stage1-pilot":
        stage1_pilot(args.pilot, args.inputs, args.out)
    elif args.command == "stage1-cilbench":
        stage1_cilbench(args.inputs, args.out)
    elif args.command == "pilot":
        settings = json.loads(args.settings)
        result = run_pilot(args.pilot, args.inputs, settings, args.seed, args.new_head_weights)
        print(json.dumps(result))
    elif args.command == "cilbench":
        print(json.dumps(run_cilbench(args.inputs, json.loads(args.settings), args.seed)))
    else:
        compare(args)


if __name__ == "__main__":
    main()
