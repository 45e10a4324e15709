"""iCaRL parity: LAMDA-PILOT's own `models/icarl.py` and cilbench's `icarl` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's iCaRL learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's icarl through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), tables and Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py; a shared exemplar total (`memory_size`, PILOT's
`fixed_memory` false: 24 -> 12, 6, 4 per class). On the PILOT side the harness replaces the
backbone factory (`utils.inc_net.get_backbone`: timm 0.6's `VisionTransformer` at the small
size, loaded from vit.pt, `out_dim` = its width instead of ViT-B's 768), the dataset lookup
(`utils.data_manager._get_idata`), the training loaders' worker count
(`models.icarl.num_workers = 0`; `models/base.py`'s exemplar loaders keep their literal 4) and
`learner.topk = 1` (top-5 of 2 classes fails in `torch.topk`). Both accuracies PILOT reports are
read after every task: `_eval_nme` (nearest mean of exemplars, iCaRL's classifier) and `_eval_cnn`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
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


def drive_both(learner: Any, manager: Any) -> dict[str, list[float]]:
    """PILOT's learner through every task as `trainer.py` drives it; after each task the top-1
    accuracy over the seen classes of its `_eval_nme` and its `_eval_cnn`."""
    accuracy: dict[str, list[float]] = {"nme": [], "cnn": []}
    with tempfile.TemporaryDirectory() as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            for _ in range(manager.nb_tasks):
                learner.incremental_train(manager)
                nme, truth = learner._eval_nme(learner.test_loader, learner._class_means)
                cnn, _ = learner._eval_cnn(learner.test_loader)
                accuracy["nme"].append(float((nme[:, 0] == truth).mean() * 100))
                accuracy["cnn"].append(float((cnn[:, 0] == truth).mean() * 100))
                learner.after_task()
        finally:
            os.chdir(cwd)
    return accuracy


def run_pilot(pilot: Path, inputs: Path, settings: dict, seed: int) -> dict:
    """PILOT's iCaRL learner on the npz stream."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import models.icarl as icarl
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net

    vit = vit_arguments(inputs)

    def get_backbone(args: dict, pretrained: bool = False) -> torch.nn.Module:
        """PILOT's `vit_base_patch16_224` branch at the small size: a timm ViT, weights vit.pt."""
        model = VisionTransformer(num_classes=0, **vit)  # ARCH's class, at the small size
        model.load_state_dict(torch.load(inputs / "vit.pt", map_location="cpu"), strict=True)
        model.out_dim = vit["embed_dim"]
        return model.eval()

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: harness_idata(inputs)()
    icarl.num_workers = 0
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": settings["memory"],
        "memory_per_class": 0, "fixed_memory": False, "shuffle": False,
        "init_cls": INCREMENT, "increment": INCREMENT, "model_name": "icarl",
        "backbone_type": "vit_base_patch16_224", "device": [torch.device("cpu")], "seed": seed,
        "init_epoch": settings["epochs"], "init_lr": settings["lr"], "init_milestones": [60, 120],
        "init_lr_decay": 0.1, "init_weight_decay": 5e-4, "epochs": settings["epochs"],
        "lrate": settings["lr"], "milestones": [80, 120], "lrate_decay": 0.1,
        "batch_size": settings["batch"], "weight_decay": 2e-4, "T": 2,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = icarl.Learner(args)
    learner.topk = 1
    return {"side": "pilot", "seed": seed, "accuracy": drive_both(learner, manager)}


def run_cilbench(inputs: Path, settings: dict, seed: int, classifier: str) -> dict:
    """cilbench's icarl through cilbench.run on the same npz stream and weights."""
    overrides = {
        "epochs": settings["epochs"], "lr": settings["lr"], "batch_size": settings["batch"],
        "weight_decay": 2e-4, "first_weight_decay": 5e-4, "schedule": "multistep",
        "milestones": (80, 120), "temperature": 2.0, "memory_size": settings["memory"],
        "memory_per_class": 0, "selection": "herding", "classifier": classifier,
        "recipe": "pilot", "augment.preset": "none",
    }  # fmt: skip
    accuracy = run_strategy(inputs, "icarl", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": {classifier: accuracy}}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(python: str, name: str, seed: int, lr: float, extra: list[str]) -> subprocess.Popen:
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        command += ["--epochs", str(args.epochs), "--batch", str(args.batch), "--lr", str(lr)]
        command += ["--memory", str(args.memory)]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sides(seed: int, lr: float, classifier: str) -> tuple[dict, dict]:
        """PILOT (both accuracies) and cilbench (one classifier) for one seed, side by side."""
        runs = start(args.pilot_python, "pilot", seed, lr, ["--pilot", str(args.pilot)])
        mine = start(sys.executable, "cilbench", seed, lr, ["--classifier", classifier])
        return accuracy_of(runs), accuracy_of(mine)

    print(
        f"## frozen network (lr {args.frozen_lr:g}: the weights move < 1e-11), herding on "
        f"fixed features, NME; memory_size {args.memory}"
    )
    reference, ours = sides(0, args.frozen_lr, "nme")
    print_identical_table(reference["nme"], ours["nme"])
    if args.seeds <= 0:
        return
    print(
        f"\n## trained: {args.epochs} epochs a task, SGD lr {args.lr}, batch {args.batch}, "
        f"memory_size {args.memory}, NME, seeds 0..{args.seeds - 1} a side"
    )
    pairs = [sides(s, args.lr, "nme") for s in range(args.seeds)]
    print_seed_table([(p["nme"], c["nme"]) for p, c in pairs])
    if not args.cnn:
        return
    print("\n## the same, CNN (the head's logits; PILOT's from the runs above)")
    cnn = []
    for seed, (reference, _) in enumerate(pairs):
        mine = start(sys.executable, "cilbench", seed, args.lr, ["--classifier", "cnn"])
        cnn.append((reference["cnn"], accuracy_of(mine)["cnn"]))
    print_seed_table(cnn)


def _arguments(name: str, p: argparse.ArgumentParser) -> None:
    if name == "compare":
        p.add_argument("--cnn", action="store_true", help="also cilbench's classifier=cnn")


def main() -> None:
    harness_main(
        __doc__, run_pilot, run_cilbench, compare, classifier="nme", add_arguments=_arguments
    )


if __name__ == "__main__":
    main()
