"""DUCT parity: LAMDA-PILOT's own `models/duct.py` and cilbench's `duct` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's DUCT learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's duct through cilbench.run, print JSON
  compare --pilot DIR ...     both sides (subprocesses): deterministic regimes, then seeds + Welch

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py. On the PILOT side only these are replaced:
the backbone factory (`utils.inc_net.get_backbone`: timm's `VisionTransformer` at the small
size, loaded from the saved weights, `out_dim` set), the dataset lookup
(`utils.data_manager._get_idata`), the learner's `topk` (1; top-5 of 2 classes fails), and one
repair without which the learner cannot run at this commit: `BaseLearner._compute_class_mean`,
which DUCT calls, is defined *inside* `_construct_exemplar_unified` (models/base.py, commit
2b10cee indented it one level too deep) and refers to a `class_cov` whose computation is
commented out. The harness builds that nested function from its own code object (PILOT's code,
unchanged) with `class_cov = 0` (the covariances DUCT never reads stay zero) and `DataLoader` at
0 workers, and sets it on the learner class. `--fixed-head first|all` (the deterministic
regimes) makes both sides start task 0's classifier rows (`first`) or every task's new rows
(`all`; the reference starts later rows at zero) from the same seeded rows. Hyper-parameters:
PILOT's exps/duct.json (merge_scalar 0.25, head_merge_ratio 0.25, ot_reg 0.02, bcb_lr_scale
0.01, weight decay 5e-4) with the epochs, learning rate, batch
and re-training epochs of the command line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fecam import CLASSES, INCREMENT, VIT, drive_learner, harness_idata, run_strategy, welch_table

RECORD: dict[str, list] = {"head": [], "similarity": []}
"""What each side records after every task: classifier rows, the merge's class-mean cosine."""


def fixed_rows() -> Any:
    """Seeded classifier rows (CLASSES, D): uniform(-1/sqrt D, 1/sqrt D), CosineLinear's."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    bound = VIT["embed_dim"] ** -0.5
    return (torch.rand(CLASSES, VIT["embed_dim"], generator=generator) * 2 - 1) * bound


def repaired_compute_class_mean(base: Any) -> Any:
    """PILOT's nested `_compute_class_mean`, as a function (see the module docstring)."""
    import types

    import torch

    outer = base.BaseLearner._construct_exemplar_unified.__code__
    (code,) = [c for c in outer.co_consts if getattr(c, "co_name", "") == "_compute_class_mean"]

    def loader(*args: Any, **kwargs: Any) -> Any:
        return torch.utils.data.DataLoader(*args, **{**kwargs, "num_workers": 0})

    scope = {**vars(base), "class_cov": 0, "DataLoader": loader}
    return types.FunctionType(code, scope, "_compute_class_mean", (False, False))


def run_pilot(pilot: Path, inputs: Path, args: argparse.Namespace) -> dict:
    """PILOT's DUCT learner on the npz stream; accuracy over seen classes after each task."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import models.base as base
    import models.duct as duct
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net

    HarnessData = harness_idata(inputs)

    def get_backbone(settings: dict, pretrained: bool = False) -> Any:
        model = VisionTransformer(num_classes=0, **VIT)  # fecam.ARCH at the small size
        model.load_state_dict(torch.load(inputs / "vit.pt", map_location="cpu"))
        model.out_dim = VIT["embed_dim"]
        return model

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: HarnessData()
    duct.Learner._compute_class_mean = repaired_compute_class_mean(base)
    if args.fixed_head != "none":
        seed_rows(inc_net.SimpleVitNet, args.fixed_head)
    record_pilot(duct.Learner)
    settings = {
        "prefix": "parity", "dataset": "harness", "memory_size": 0, "memory_per_class": 0,
        "fixed_memory": False, "shuffle": False, "init_cls": INCREMENT, "increment": INCREMENT,
        "model_name": "duct", "backbone_type": "vit_base_patch16_224",
        "device": [torch.device("cpu")], "seed": args.seed, "merge_scalar": 0.25,
        "head_merge_ratio": 0.25, "lr_re": 1e-3, "epc_re": args.retrain_epochs,
        "bcb_lr_scale": 0.01, "epochs": args.epochs, "lrate": args.lr, "ot_reg": 0.02,
        "milestones": [60, 100, 140], "lrate_decay": 0.1, "weight_decay": 5e-4,
        "batch_size": args.batch, "num_workers": 0,
    }  # fmt: skip
    torch.manual_seed(args.seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, args.seed, INCREMENT, INCREMENT, settings)
    learner = duct.Learner(settings)
    learner.topk = 1  # top-5 of 2 classes fails in torch.topk; only top-1 is read
    accuracy = drive_learner(learner, manager)
    return {"side": "pilot", "seed": args.seed, "accuracy": accuracy, **RECORD}


def seed_rows(network_class: Any, which: str) -> None:
    """After PILOT's `update_fc`: task 0's rows (`first`) or every new row (`all`) seeded."""
    import torch

    rows, grow = fixed_rows(), network_class.update_fc

    def update_fc(self: Any, nb_classes: int, nextperiod_initialization: Any = None) -> None:
        old = self.fc.out_features if self.fc is not None else 0
        grow(self, nb_classes, nextperiod_initialization)
        if old == 0 or which == "all":
            with torch.no_grad():
                self.fc.weight[old:] = rows[old:nb_classes]

    network_class.update_fc = update_fc


def record_pilot(learner_class: Any) -> None:
    """Record the classifier after each task's transport and each merge's cosine."""
    transport, ratio = (
        learner_class._stage2_transport_classifier,
        learner_class._calculate_adjust_ratio,
    )

    def after_transport(self: Any) -> None:
        transport(self)
        RECORD["head"].append(self._network.fc.weight.detach().tolist())

    def adjust_ratio(self: Any, means: Any) -> Any:
        value = ratio(self, means)
        RECORD["similarity"].append(float(value))
        return value

    learner_class._stage2_transport_classifier = after_transport
    learner_class._calculate_adjust_ratio = adjust_ratio


def run_cilbench(inputs: Path, args: argparse.Namespace) -> dict:
    """cilbench's duct through cilbench.run on the same npz stream and weights."""
    import torch

    from cilbench.strategies.duct import DUCT

    grow, train = DUCT._grow_head, DUCT.train_experience
    rows = fixed_rows()

    def grow_head(self: Any, count: int, generator: Any) -> None:
        grow(self, count, generator)
        head, old = self.network.head, sum(self.sizes)
        if args.fixed_head == "all" or (args.fixed_head == "first" and old == 0):
            with torch.no_grad():
                head.weight[old:] = rows[old : old + count].to(head.weight)

    def train_experience(self: Any, experience: Any) -> None:
        train(self, experience)
        RECORD["head"].append(self.network.head.weight.detach().tolist())
        RECORD["similarity"].append(self.similarities[-1])

    DUCT._grow_head = grow_head  # type: ignore[method-assign]
    DUCT.train_experience = train_experience  # type: ignore[method-assign]
    overrides = {
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch, "weight_decay": 5e-4,
        "retrain_epochs": args.retrain_epochs, "merge_scalar": 0.25, "head_merge_ratio": 0.25,
        "ot_reg": 0.02, "backbone_lr_scale": 0.01, "schedule": "constantlr-default",
        "augment.preset": "none", "recipe": "pilot",
    }  # fmt: skip
    accuracy = run_strategy(inputs, "duct", overrides, args.seed)
    return {"side": "cilbench", "seed": args.seed, "accuracy": accuracy, **RECORD}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(python: str, name: str, seed: int, settings: dict) -> subprocess.Popen:
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        for key, value in settings.items():
            command += [f"--{key}", str(value)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(process: subprocess.Popen) -> dict:
        out, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{process.args[2]} failed:\n{err.decode()[-3000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def both(seed: int, settings: dict) -> tuple[dict, dict]:
        """The two sides of one seed side by side (one process each)."""
        runs = start(args.pilot_python, "pilot", seed, {**settings, "pilot": args.pilot})
        mine = start(sys.executable, "cilbench", seed, settings)
        return result(runs), result(mine)

    def deterministic(title: str, settings: dict) -> None:
        print(f"## {title}")
        reference, ours = both(0, settings)
        print("| task | PILOT | cilbench | max abs diff, classifier rows | merge cosine PILOT / "
              "cilbench |\n|---|---|---|---|---|")  # fmt: skip
        for t, (a, b) in enumerate(zip(reference["accuracy"], ours["accuracy"])):
            gap = np.abs(np.array(reference["head"][t]) - np.array(ours["head"][t])).max()
            sims = f"{reference['similarity'][t]:.7f} / {ours['similarity'][t]:.7f}"
            print(f"| {t} | {a:.2f} | {b:.2f} | {gap:.2e} | {sims} |")
        print()

    deterministic(
        "lr 0, every task's new rows seeded (transport of seeded rows; backbone unchanged)",
        {"epochs": 1, "lr": 0.0, "batch": args.batch, "retrain-epochs": 1, "fixed-head": "all"},
    )
    full = {"epochs": args.epochs, "lr": args.lr, "batch": 64,
            "retrain-epochs": args.retrain_epochs}  # fmt: skip
    trained_title = (
        f"full batch (64 >= 60 images a task, so the data order cannot differ), {args.epochs} "
        f"epochs lr {args.lr}, {args.retrain_epochs} re-training epochs"
    )
    deterministic(f"{trained_title}, every task's new rows seeded", {**full, "fixed-head": "all"})
    deterministic(
        f"{trained_title}, task 0's rows seeded, later rows zero (the reference's start)",
        {**full, "fixed-head": "first"},
    )
    if args.seeds <= 0:
        return
    trained = {"epochs": args.epochs, "lr": args.lr, "batch": args.batch,
               "retrain-epochs": args.retrain_epochs, "fixed-head": "none"}  # fmt: skip
    print(
        f"## trained: {args.epochs} epochs SGD lr {args.lr} (backbone x 0.01), batch {args.batch},"
        f" {args.retrain_epochs} re-training epochs, seeds 0..{args.seeds - 1} a side"
    )
    pairs = [both(s, trained) for s in range(args.seeds)]
    welch_table(
        np.array([p[0]["accuracy"] for p in pairs]), np.array([p[1]["accuracy"] for p in pairs])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True, help="from `fecam.py inputs`")
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--lr", type=float, default=0.1)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--retrain-epochs", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--fixed-head", choices=["none", "first", "all"], default="none")
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if args.command == "pilot":
        print(json.dumps(run_pilot(args.pilot, args.inputs, args)))
    elif args.command == "cilbench":
        print(json.dumps(run_cilbench(args.inputs, args)))
    else:
        compare(args)


if __name__ == "__main__":
    main()
