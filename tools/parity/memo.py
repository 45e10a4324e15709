"""MEMO parity: LAMDA-PILOT's own `models/memo.py` and cilbench's `memo` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's MEMO learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's memo through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), tables and Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform as fecam.py,
the exemplar total of der.py (`memory_size` 24, PILOT's `fixed_memory` false). On the PILOT side
the harness replaces the backbone factory (`utils.inc_net.get_backbone`, which `AdaptiveNet`
calls for its generalized blocks and once per task for a specialized one: PILOT's own
`backbone/vit_memo.py` `Generalized_Vit` and `Specialized_Vit` at the small size, loaded from
vit.pt as PILOT's loader fills them: every `blocks.*` and the final norm, `last_block` left at
PyTorch's initialisation), the dataset lookup, the training loaders' worker count and
`learner.topk = 1`; both accuracies are read after every task (icarl.py's `drive_both`).

PILOT bug: `models/memo.py` overrides `_construct_exemplar` with the line that stores a class's
exemplar mean dedented out of the class loop, so after each task only the last new class gets a
mean (the others keep `_reduce_exemplar`'s zeros) and `_eval_nme` is wrong (CIFAR's
`fixed_memory` false path; ImageNet-R's `_construct_exemplar_unified` is base's). PILOT's
reported accuracy is the CNN's. `--correct-nme` (PILOT side) puts base's method back at run time.

`--pretrained-deep` (both sides): the specialized block starts from the saved ViT's last block
(PILOT: `last_block` loaded from `blocks.<depth-1>` in the harness; cilbench `deep_init`
pretrained) instead of a random draw, so that a run can be identical; `--fixed-init` as der.py
(every linear head from `fixed_pattern`). Without them PILOT runs as shipped and cilbench with
`deep_init=fresh`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from der import FULL_BATCH, fixed_pattern
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


def run_pilot(pilot: Path, inputs: Path, settings: dict, seed: int) -> dict:
    """PILOT's MEMO learner on the npz stream."""
    import torch

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import models.memo as memo
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net
    from backbone.vit_memo import Generalized_Vit, Specialized_Vit

    vit = vit_arguments(inputs)
    state = torch.load(inputs / "vit.pt", map_location="cpu")
    last = vit["depth"] - 1

    def get_backbone(args: dict, pretrained: bool = False) -> tuple[Any, Any]:
        """PILOT's `_memo` branch at the small size: the two halves, filled from vit.pt."""
        base = Generalized_Vit(num_classes=0, **vit)
        kept = {k: v for k, v in state.items() if not k.startswith(f"blocks.{last}.")}
        base.load_state_dict(kept, strict=True)
        adaptive = Specialized_Vit(num_classes=0, **vit)
        missing, unexpected = adaptive.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("last_block.") for k in missing), missing
        if settings["pretrained_deep"]:
            prefix = f"blocks.{last}."
            block = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            adaptive.last_block.load_state_dict(block)
        base.out_dim = adaptive.out_dim = vit["embed_dim"]
        return base, adaptive

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: harness_idata(inputs)()
    memo.num_workers = 0
    if settings["correct_nme"]:  # every new class's mean, not the last one's alone
        from models.base import BaseLearner

        memo.Learner._construct_exemplar = BaseLearner._construct_exemplar
    if settings["fixed_init"]:

        def reset_parameters(self: Any) -> None:
            fixed_pattern(self.weight)
            torch.nn.init.constant_(self.bias, 0)

        inc_net.SimpleLinear.reset_parameters = reset_parameters
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": settings["memory"],
        "memory_per_class": 0, "fixed_memory": False, "shuffle": False,
        "init_cls": INCREMENT, "increment": INCREMENT, "model_name": "memo",
        "backbone_type": "vit_base_patch16_224_memo", "train_base": False,
        "train_adaptive": False, "skip": False, "device": [torch.device("cpu")], "seed": seed,
        "scheduler": "steplr", "t_max": None, "init_epoch": settings["epochs"],
        "init_lr": settings["lr"], "init_weight_decay": 5e-4, "init_lr_decay": 0.1,
        "init_milestones": [60, 120, 170], "milestones": [80, 120, 150],
        "epochs": settings["epochs"], "lrate": settings["lr"], "batch_size": settings["batch"],
        "weight_decay": 2e-4, "lrate_decay": 0.1, "alpha_aux": 1.0,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = memo.Learner(args)
    learner.topk = 1
    return {"side": "pilot", "seed": seed, "accuracy": drive_both(learner, manager)}


def run_cilbench(inputs: Path, settings: dict, seed: int, classifier: str) -> dict:
    """cilbench's memo through cilbench.run on the same npz stream and weights."""
    overrides = {
        "first_epochs": settings["epochs"], "epochs": settings["epochs"], "lr": settings["lr"],
        "batch_size": settings["batch"], "weight_decay": 2e-4, "first_weight_decay": 5e-4,
        "schedule": "multistep", "milestones": (80, 120, 150), "aux_weight": 1.0,
        "deep_blocks": 1, "deep_init": "pretrained" if settings["pretrained_deep"] else "fresh",
        "memory_size": settings["memory"], "memory_per_class": 0, "selection": "herding",
        "classifier": classifier, "recipe": "pilot", "augment.preset": "none",
    }  # fmt: skip
    if settings["fixed_init"]:
        import cilbench.learn.expansion as expansion

        drawn = expansion.linear_head

        def linear_head(dim: int, size: int, *args: Any, **kwargs: Any) -> Any:
            head = drawn(dim, size, *args, **kwargs)
            fixed_pattern(head.weight)
            return head

        expansion.linear_head = linear_head
    accuracy = run_strategy(inputs, "memo", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": {classifier: accuracy}}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(python: str, name: str, seed: int, run: tuple, extra: list[str]) -> subprocess.Popen:
        epochs, batch, lr = run
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        command += ["--epochs", str(epochs), "--lr", str(lr), "--memory", str(args.memory)]
        command += ["--batch", str(batch)]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sides(seed: int, run: tuple, extra: list[str], correct: bool) -> tuple[dict, dict]:
        """PILOT (both accuracies) and cilbench (both classifiers, one run each) for one seed."""
        pilot = ["--pilot", str(args.pilot), *extra, *(["--correct-nme"] if correct else [])]
        runs = start(args.pilot_python, "pilot", seed, run, pilot)
        cnn = start(sys.executable, "cilbench", seed, run, ["--classifier", "cnn", *extra])
        reference, ours = accuracy_of(runs), accuracy_of(cnn)
        if correct:
            nme = start(sys.executable, "cilbench", seed, run, ["--classifier", "nme", *extra])
            ours.update(accuracy_of(nme))
        return reference, ours

    fixed = ["--pretrained-deep", "--fixed-init"]
    if "frozen" in args.regimes:
        print(
            f"## frozen (lr {args.frozen_lr:g}, 1 epoch), the specialized block from the saved "
            f"ViT's last block and the heads from `fixed_pattern` on both sides, herding on "
            f"fixed features; memory_size {args.memory}; PILOT's NME with its class means "
            f"corrected (`--correct-nme`)"
        )
        reference, ours = sides(0, (1, args.batch, args.frozen_lr), fixed, True)
        for classifier in ("cnn", "nme"):
            print(f"\n{classifier}:")
            print_identical_table(reference[classifier], ours[classifier])
        shipped = accuracy_of(
            start(args.pilot_python, "pilot", 0, (1, args.batch, args.frozen_lr),
                  ["--pilot", str(args.pilot), *fixed])
        )  # fmt: skip
        print(f"\nPILOT's NME as shipped (one class mean per task set): {shipped['nme']}")
    if "fixed" in args.regimes:
        print(
            f"\n## trained from a shared fixed head initialisation and the pre-trained last "
            f"block, one full batch a step (batch {FULL_BATCH}): {args.fixed_epochs} epochs a "
            f"task, SGD lr {args.fixed_lr}; PILOT's NME corrected"
        )
        reference, ours = sides(0, (args.fixed_epochs, FULL_BATCH, args.fixed_lr), fixed, True)
        for classifier in ("cnn", "nme"):
            print(f"\n{classifier}:")
            print_identical_table(reference[classifier], ours[classifier])
    if "trained" in args.regimes and args.seeds > 0:
        print(
            f"\n## trained as shipped (PILOT's random specialized block; cilbench deep_init "
            f"fresh): {args.epochs} epochs a task, SGD lr {args.lr}, batch {args.batch}, "
            f"memory_size {args.memory}, CNN, seeds 0..{args.seeds - 1} a side"
        )
        pairs = [sides(s, (args.epochs, args.batch, args.lr), [], False) for s in range(args.seeds)]
        print_seed_table([(p["cnn"], c["cnn"]) for p, c in pairs])


def _arguments(name: str, p: argparse.ArgumentParser) -> None:
    if name in ("pilot", "cilbench"):
        p.add_argument("--fixed-init", action="store_true", help="fixed_pattern heads")
        p.add_argument("--pretrained-deep", action="store_true", help="see the docstring")
    if name == "pilot":
        p.add_argument("--correct-nme", action="store_true", help="see the docstring")
    if name == "compare":
        p.add_argument("--fixed-lr", type=float, default=0.1)
        p.add_argument("--fixed-epochs", type=int, default=20)
        p.add_argument("--regimes", default="frozen,fixed,trained")


def main() -> None:
    harness_main(
        __doc__, run_pilot, run_cilbench, compare, epochs=5, add_arguments=_arguments,
        settings={"fixed_init": False, "pretrained_deep": False, "correct_nme": False},
    )  # fmt: skip


if __name__ == "__main__":
    main()
