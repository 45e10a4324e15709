"""Coil: LAMDA-PILOT's learner against cilbench's strategy on fecam.py's inputs.

PILOT's `models/coil.py` `Learner` (5240714d, with `SimpleCosineIncrementalNet`, `CosineLinear`
and `models/base.py`'s exemplar construction and evaluation) in the side venv; cilbench's `coil`
through `cilbench.run`, on the same images, ViT weights and transform (3 tasks of 2 classes,
natural order, ToTensor + Normalize(0.5, 0.5), no augmentation) and PILOT's `exps/coil.json`
settings (sinkhorn 0.464, norm_term 3, reg_term 1e-3, T 2, SGD momentum 0.9, weight decay 5e-4,
milestones 80,120 not reached), a shared exemplar total (`memory_size`, `fixed_memory` false).
Both accuracies PILOT reports are read after every task (icarl.py's `drive_both`): `_eval_cnn`
(the cosine classifier, Coil's) and `_eval_nme`.

On PILOT's side the harness replaces the backbone factory (`utils.inc_net.get_backbone`: timm
0.6's `VisionTransformer` at the small size from vit.pt, `out_dim` its width), the dataset lookup,
the `DataLoader` of `models.coil` and `models.base` (their literal `num_workers=4` set to 0: the
worker count changes no data and no draw) and `learner.topk = 1`.

`--fixed-init` (both sides): the first task's cosine rows start from `fixed_pattern` instead of
a random draw (PILOT's `CosineLinear.reset_parameters`, cilbench's `strategies.coil.first_rows`
replaced in the harness process); later tasks' rows come from the prospective transport on both
sides. With a batch larger than a task's training set (one full batch a step, so the data order
does not matter) a trained run is then deterministic on both sides.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fecam import (
    INCREMENT,
    accuracy_of,
    harness_idata,
    print_identical_table,
    print_seed_table,
    run_strategy,
    vit_arguments,
)
from harness_cli import harness_main
from icarl import drive_both

FULL_BATCH = 128
"""More than a task's training images + exemplars (60 + 24): one batch a step, in any order."""


def fixed_pattern(weight: Any) -> None:
    """Fill a (out, in) weight in place: CosineLinear's bound 1/sqrt(in) times the sine of each
    entry's flat position + 1."""
    import torch

    out, dim = weight.shape
    positions = torch.arange(out * dim, dtype=torch.float64).reshape(out, dim) + 1
    with torch.no_grad():
        weight.copy_(dim**-0.5 * torch.sin(positions))


def run_pilot(pilot: Path, inputs: Path, settings: dict, seed: int) -> dict:
    """PILOT's Coil learner on the npz stream."""
    import functools

    import torch
    from timm.models.vision_transformer import VisionTransformer

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import backbone.linears as linears
    import models.base as base
    import models.coil as coil
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net

    vit = vit_arguments(inputs)

    def get_backbone(args: dict, pretrained: bool = False) -> torch.nn.Module:
        """PILOT's `vit_base_patch16_224` branch at the small size: a timm ViT, weights vit.pt."""
        model = VisionTransformer(num_classes=0, **vit)
        model.load_state_dict(torch.load(inputs / "vit.pt", map_location="cpu"), strict=True)
        model.out_dim = vit["embed_dim"]
        return model.eval()

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: harness_idata(inputs)()
    loader = functools.partial(torch.utils.data.DataLoader, num_workers=0)
    coil.DataLoader = base.DataLoader = lambda *a, num_workers=0, **k: loader(*a, **k)
    if settings["fixed_init"]:

        def reset_parameters(self: Any) -> None:
            fixed_pattern(self.weight)
            if self.sigma is not None:
                self.sigma.data.fill_(1)

        linears.CosineLinear.reset_parameters = reset_parameters
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": settings["memory"],
        "memory_per_class": 0, "fixed_memory": False, "shuffle": False,
        "init_cls": INCREMENT, "increment": INCREMENT, "model_name": "coil",
        "backbone_type": "vit_base_patch16_224", "device": [torch.device("cpu")], "seed": seed,
        "epochs": settings["epochs"], "lrate": settings["lr"], "milestones": [80, 120],
        "lrate_decay": 0.1, "batch_size": settings["batch"], "T": 2, "sinkhorn": 0.464,
        "calibration_term": 1.5, "norm_term": 3.0, "reg_term": 1e-3,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = coil.Learner(args)
    learner.topk = 1
    return {"side": "pilot", "seed": seed, "accuracy": drive_both(learner, manager)}


def run_cilbench(inputs: Path, settings: dict, seed: int, classifier: str) -> dict:
    """cilbench's coil through cilbench.run on the same npz stream and weights."""
    overrides = {
        "epochs": settings["epochs"], "lr": settings["lr"], "batch_size": settings["batch"],
        "weight_decay": 5e-4, "schedule": "multistep", "milestones": (80, 120),
        "sinkhorn_reg": 0.464, "cost_norm": 3.0, "retrospective_weight": 1e-3,
        "prospective_weight": 1e-3, "temperature": 2.0, "memory_size": settings["memory"],
        "memory_per_class": 0, "selection": "herding", "classifier": classifier,
        "recipe": "pilot", "augment.preset": "none",
    }  # fmt: skip
    if settings["fixed_init"]:
        import cilbench.strategies.coil as coil

        def first_rows(count: int, dim: int, generator: Any) -> Any:
            import torch

            rows = torch.empty(count, dim)
            fixed_pattern(rows)
            return rows

        coil.first_rows = first_rows
    accuracy = run_strategy(inputs, "coil", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": {classifier: accuracy}}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(
        python: str, name: str, seed: int, lr: float, extra: list[str], fixed: bool = False
    ) -> subprocess.Popen:
        epochs, batch = (args.fixed_epochs, FULL_BATCH) if fixed else (args.epochs, args.batch)
        if lr == args.frozen_lr:
            epochs = 2  # the retrospective plan is solved (epoch 1) but nothing moves
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        command += ["--epochs", str(epochs), "--lr", str(lr), "--memory", str(args.memory)]
        command += ["--batch", str(batch)]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sides(
        seed: int, lr: float, classifier: str, fixed: list[str] | None = None
    ) -> tuple[dict, dict]:
        """PILOT (both accuracies) and cilbench (one classifier) for one seed, one after the
        other (two cores shared with other work)."""
        pilot = ["--pilot", str(args.pilot), *(fixed or [])]
        reference = accuracy_of(start(args.pilot_python, "pilot", seed, lr, pilot, bool(fixed)))
        ours = ["--classifier", classifier, *(fixed or [])]
        return reference, accuracy_of(
            start(sys.executable, "cilbench", seed, lr, ours, bool(fixed))
        )

    if not args.skip_deterministic:
        print(
            f"## frozen (lr {args.frozen_lr:g}, 2 epochs, batch {FULL_BATCH}), shared fixed "
            f"first-task rows (`--fixed-init`): task 0 from the fixed rows, later tasks' new rows "
            f"from the prospective transport; memory_size {args.memory}"
        )
        for classifier in ("cnn", "nme"):
            reference, ours = sides(0, args.frozen_lr, classifier, ["--fixed-init"])
            print(f"\n{classifier}:")
            print_identical_table(reference[classifier], ours[classifier])
        print(
            f"\n## trained from shared fixed first-task rows (`--fixed-init`), one full batch a "
            f"step (batch {FULL_BATCH}): {args.fixed_epochs} epochs a task, SGD lr {args.fixed_lr}"
        )
        for classifier in ("cnn", "nme"):
            reference, ours = sides(0, args.fixed_lr, classifier, ["--fixed-init"])
            print(f"\n{classifier}:")
            print_identical_table(reference[classifier], ours[classifier])
    if args.seeds <= 0:
        return
    what = "CNN (the cosine classifier, Coil's)" if args.classifier == "cnn" else "NME"
    print(
        f"\n## trained: {args.epochs} epochs a task, SGD lr {args.lr}, batch {args.batch}, "
        f"memory_size {args.memory}, {what}, seeds 0..{args.seeds - 1}"
    )
    pairs = [sides(s, args.lr, args.classifier) for s in range(args.seeds)]
    print_seed_table([(p[args.classifier], c[args.classifier]) for p, c in pairs])


def _arguments(name: str, p: argparse.ArgumentParser) -> None:
    if name in ("pilot", "cilbench"):
        p.add_argument("--fixed-init", action="store_true", help="fixed_pattern first rows")
    if name == "compare":
        p.add_argument("--fixed-lr", type=float, default=0.1)
        p.add_argument("--fixed-epochs", type=int, default=10)
        p.add_argument("--skip-deterministic", action="store_true")
        p.add_argument("--classifier", default="cnn", choices=("nme", "cnn"))


def main() -> None:
    harness_main(
        __doc__, run_pilot, run_cilbench, compare, epochs=5, lr=0.05, seeds=3,
        add_arguments=_arguments, settings={"fixed_init": False},
    )  # fmt: skip


if __name__ == "__main__":
    main()
