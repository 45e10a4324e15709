"""DER parity: LAMDA-PILOT's own `models/der.py` and cilbench's `der` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's DER learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's der through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), tables and Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py; a shared exemplar total (`memory_size`, PILOT's
`fixed_memory` false: 24 -> 12, 6, 4 per class). On the PILOT side the harness replaces what
icarl.py replaces: the backbone factory (`utils.inc_net.get_backbone`, which `DERNet.update_fc`
calls once per task: timm 0.6's `VisionTransformer` at the small size, loaded from vit.pt,
`out_dim` = its width instead of ViT-B's 768), the dataset lookup, the training loaders' worker
count (`models.der.num_workers = 0`) and `learner.topk = 1`. Both accuracies PILOT reports are
read after every task (icarl.py's `drive_both`): `_eval_cnn` (the classifier, DER's) and
`_eval_nme` (nearest mean of exemplars on the concatenated features).

`--fixed-init` (both sides): every linear layer the method builds (the widened classifier, the
auxiliary head) starts from `fixed_pattern` instead of a random draw: PILOT's
`SimpleLinear.reset_parameters` and cilbench's `learn.expansion.linear_head` are replaced in the
harness process. With a batch larger than the training set (one full batch a step, so the data
order does not matter) a trained run is then deterministic on both sides.
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
    """Fill a (out, in) weight in place: Kaiming-uniform's bound sqrt(3 / in) times the sine of
    each entry's flat position + 1 (a fixed spread of values in the same range)."""
    import torch

    out, dim = weight.shape
    positions = torch.arange(out * dim, dtype=torch.float64).reshape(out, dim) + 1
    with torch.no_grad():
        weight.copy_((3.0 / dim) ** 0.5 * torch.sin(positions))


def run_pilot(pilot: Path, inputs: Path, settings: dict, seed: int) -> dict:
    """PILOT's DER learner on the npz stream."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import models.der as der
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
    der.num_workers = 0
    if settings["fixed_init"]:

        def reset_parameters(self: Any) -> None:
            fixed_pattern(self.weight)
            torch.nn.init.constant_(self.bias, 0)

        inc_net.SimpleLinear.reset_parameters = reset_parameters
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": settings["memory"],
        "memory_per_class": 0, "fixed_memory": False, "shuffle": False,
        "init_cls": INCREMENT, "increment": INCREMENT, "model_name": "der",
        "backbone_type": "vit_base_patch16_224", "device": [torch.device("cpu")], "seed": seed,
        "init_epoch": settings["epochs"], "init_lr": settings["lr"],
        "init_milestones": [60, 120, 170], "init_lr_decay": 0.1, "init_weight_decay": 5e-4,
        "epochs": settings["epochs"], "lrate": settings["lr"], "milestones": [80, 120, 150],
        "lrate_decay": 0.1, "batch_size": settings["batch"], "weight_decay": 2e-4, "T": 2,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = der.Learner(args)
    learner.topk = 1
    return {"side": "pilot", "seed": seed, "accuracy": drive_both(learner, manager)}


def run_cilbench(inputs: Path, settings: dict, seed: int, classifier: str) -> dict:
    """cilbench's der through cilbench.run on the same npz stream and weights."""
    overrides = {
        "epochs": settings["epochs"], "lr": settings["lr"], "batch_size": settings["batch"],
        "weight_decay": 2e-4, "first_weight_decay": 5e-4, "schedule": "multistep",
        "milestones": (80, 120, 150), "aux_weight": 1.0, "memory_size": settings["memory"],
        "memory_per_class": 0, "selection": "herding", "classifier": classifier,
        "recipe": "pilot", "augment.preset": "none",
    }  # fmt: skip
    if settings["fixed_init"]:
        import cilbench.learn.expansion as der

        drawn = der.linear_head

        def linear_head(dim: int, size: int, *args: Any, **kwargs: Any) -> Any:
            head = drawn(dim, size, *args, **kwargs)
            fixed_pattern(head.weight)
            return head

        der.linear_head = linear_head
    accuracy = run_strategy(inputs, "der", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": {classifier: accuracy}}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(
        python: str, name: str, seed: int, lr: float, extra: list[str], fixed: bool = False
    ) -> subprocess.Popen:
        epochs, batch = (args.fixed_epochs, FULL_BATCH) if fixed else (args.epochs, args.batch)
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        command += ["--epochs", str(epochs), "--lr", str(lr), "--memory", str(args.memory)]
        command += ["--batch", str(batch)]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sides(
        seed: int, lr: float, classifier: str, fixed: list[str] | None = None
    ) -> tuple[dict, dict]:
        """PILOT (both accuracies) and cilbench (one classifier) for one seed, side by side."""
        pilot = ["--pilot", str(args.pilot), *(fixed or [])]
        runs = start(args.pilot_python, "pilot", seed, lr, pilot, bool(fixed))
        ours = ["--classifier", classifier, *(fixed or [])]
        mine = start(sys.executable, "cilbench", seed, lr, ours, bool(fixed))
        return accuracy_of(runs), accuracy_of(mine)

    print(
        f"## frozen extractors (lr {args.frozen_lr:g}: the weights move < 1e-11), herding on "
        f"fixed features, NME; memory_size {args.memory}"
    )
    reference, ours = sides(0, args.frozen_lr, "nme")
    print_identical_table(reference["nme"], ours["nme"])
    print(
        f"\n## trained from a shared fixed head initialisation (`--fixed-init`), one full batch "
        f"a step (batch {FULL_BATCH}): {args.fixed_epochs} epochs a task, SGD lr "
        f"{args.fixed_lr}, CNN then NME"
    )
    for classifier in ("cnn", "nme"):
        reference, ours = sides(0, args.fixed_lr, classifier, ["--fixed-init"])
        print(f"\n{classifier}:")
        print_identical_table(reference[classifier], ours[classifier])
    if args.seeds <= 0:
        return
    print(
        f"\n## trained: {args.epochs} epochs a task, SGD lr {args.lr}, batch {args.batch}, "
        f"memory_size {args.memory}, CNN (the classifier, DER's), seeds 0..{args.seeds - 1} a side"
    )
    pairs = [sides(s, args.lr, "cnn") for s in range(args.seeds)]
    print_seed_table([(p["cnn"], c["cnn"]) for p, c in pairs])
    if not args.nme:
        return
    print("\n## the same, NME (PILOT's from the runs above)")
    nme = []
    for seed, (reference, _) in enumerate(pairs):
        mine = start(sys.executable, "cilbench", seed, args.lr, ["--classifier", "nme"])
        nme.append((reference["nme"], accuracy_of(mine)["nme"]))
    print_seed_table(nme)


def _arguments(name: str, p: argparse.ArgumentParser) -> None:
    if name in ("pilot", "cilbench"):
        p.add_argument("--fixed-init", action="store_true", help="fixed_pattern heads")
    if name == "compare":
        p.add_argument("--fixed-lr", type=float, default=0.1)
        p.add_argument("--fixed-epochs", type=int, default=20)
        p.add_argument("--nme", action="store_true", help="also cilbench's classifier=nme")


def main() -> None:
    harness_main(
        __doc__, run_pilot, run_cilbench, compare, add_arguments=_arguments,
        settings={"fixed_init": False},
    )  # fmt: skip


if __name__ == "__main__":
    main()
