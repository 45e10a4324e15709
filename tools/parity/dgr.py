"""DGR parity: LAMDA-PILOT's own `models/dgr.py` and cilbench's `dgr` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's DGR learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's dgr through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), tables and Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py; a shared exemplar total (`memory_size`, PILOT's
`fixed_memory` false: 24 -> 12, 6, 4 per class), so the new classes outnumber the exemplars (30
images a class against 12 or 6) and the logit adjustment and reweighting have an imbalance to
act on. On the PILOT side the harness replaces what icarl.py replaces (the backbone factory: timm
0.6's `VisionTransformer` at the small size from vit.pt; the dataset lookup; the training
loaders' worker count, `models.dgr.num_workers = 0`; `learner.topk = 1`) and makes
`Tensor.cuda` return its tensor unchanged: `regularized_cn` moves the class prior to CUDA
unconditionally, which fails on a machine without one. Both accuracies PILOT reports are read
after every task (icarl.py's `drive_both`): `_eval_cnn` (the head, DGR's) and `_eval_nme`.

`--fixed-init` (both sides): the head starts from der.py's `fixed_pattern` instead of a random
draw. PILOT builds a new `SimpleLinear` over every seen class per task and copies the old rows in,
so its new rows hold the pattern's rows K..N-1 of an N-row matrix; cilbench's new head block gets
the same rows (`TaskHeads.grow` wrapped in the harness process).

`--teacher-scale X` (both sides): the distillation teacher's head (weights and bias) is multiplied
by X when the teacher is made (PILOT: after `after_task`; cilbench: `strategies.dgr.frozen_copy`
wrapped). Unscaled, the new network's old logits equal the teacher's at the first step of every
task, so the distillation gradient there is float rounding and PILOT's scale `s` (its
`ratio_kd`) blows that noise up to the cross-entropy gradient's size: the two sides then take
different first steps however exactly they agree otherwise. A scaled teacher gives a real
distillation gradient from the first step, so a fixed-init, full-batch run is deterministic on
both sides and must agree up to float rounding.
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
    """PILOT's DGR learner on the npz stream."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import models.dgr as dgr
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
    dgr.num_workers = 0
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # regularized_cn's .cuda(), on a CPU
    if settings["fixed_init"]:

        def reset_parameters(self: Any) -> None:
            fixed_pattern(self.weight)
            torch.nn.init.constant_(self.bias, 0)

        inc_net.SimpleLinear.reset_parameters = reset_parameters
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": settings["memory"],
        "memory_per_class": 0, "fixed_memory": False, "shuffle": False,
        "init_cls": INCREMENT, "increment": INCREMENT, "lambda": 1, "gammar_r": 1,
        "model_name": "dgr", "backbone_type": "vit_base_patch16_224",
        "device": [torch.device("cpu")], "seed": seed, "init_epoch": settings["epochs"],
        "init_lr": settings["lr"], "init_weight_decay": 5e-4, "epochs": settings["epochs"],
        "lrate": settings["lr"], "batch_size": settings["batch"], "weight_decay": 5e-4, "T": 2,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = dgr.Learner(args)
    learner.topk = 1
    scale = settings["teacher_scale"]
    if scale != 1.0:
        after_task = learner.after_task

        def scaled_after_task() -> None:
            """PILOT's `after_task`, then the teacher's head scaled (see --teacher-scale)."""
            after_task()
            with torch.no_grad():
                learner._old_network.fc.weight.mul_(scale)
                learner._old_network.fc.bias.mul_(scale)

        learner.after_task = scaled_after_task
    return {"side": "pilot", "seed": seed, "accuracy": drive_both(learner, manager)}


def run_cilbench(inputs: Path, settings: dict, seed: int, classifier: str) -> dict:
    """cilbench's dgr through cilbench.run on the same npz stream and weights."""
    overrides = {
        "epochs": settings["epochs"], "lr": settings["lr"], "batch_size": settings["batch"],
        "weight_decay": 5e-4, "schedule": "cosine", "temperature": 2.0, "kd_weight": 1.0,
        "gamma_r": 1.0, "memory_size": settings["memory"], "memory_per_class": 0,
        "selection": "herding", "classifier": classifier, "recipe": "pilot",
        "augment.preset": "none",
    }  # fmt: skip
    if settings["fixed_init"]:
        from cilbench.learn.heads import TaskHeads

        grow = TaskHeads.grow

        def fixed_grow(self: TaskHeads, size: int, *args: Any, **kwargs: Any) -> Any:
            """The new block = rows K..N-1 of the pattern over all N seen classes."""
            import torch

            known = self.num_classes
            head = grow(self, size, *args, **kwargs)
            whole = torch.empty(known + size, self.dim)
            fixed_pattern(whole)
            with torch.no_grad():
                head.weight.copy_(whole[known:])
            return head

        TaskHeads.grow = fixed_grow  # type: ignore[method-assign]
    scale = settings["teacher_scale"]
    if scale != 1.0:
        import torch

        import cilbench.strategies.dgr as dgr

        frozen_copy = dgr.frozen_copy

        def scaled_copy(network: Any) -> Any:
            """cilbench's teacher, its head scaled (see --teacher-scale)."""
            old = frozen_copy(network)
            with torch.no_grad():
                for head in old.heads.heads:
                    head.weight.mul_(scale)
                    head.bias.mul_(scale)
            return old

        dgr.frozen_copy = scaled_copy
    accuracy = run_strategy(inputs, "dgr", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": {classifier: accuracy}}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(
        python: str, name: str, seed: int, lr: float, extra: list[str], fixed: bool = False
    ) -> subprocess.Popen:
        epochs, batch = (args.fixed_epochs, FULL_BATCH) if fixed else (args.epochs, args.batch)
        if lr == args.frozen_lr:
            epochs = 1
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

    if "frozen" in args.regimes:
        print(
            f"## frozen network (lr {args.frozen_lr:g}, 1 epoch: the weights move < 1e-11), "
            f"fixed head initialisation (`--fixed-init`), batch {args.batch}; memory_size "
            f"{args.memory}"
        )
        for classifier in ("cnn", "nme"):
            reference, ours = sides(0, args.frozen_lr, classifier, ["--fixed-init"])
            print(f"\n{classifier}:")
            print_identical_table(reference[classifier], ours[classifier])
    if "fixed" in args.regimes:
        print(
            f"\n## trained from a shared fixed head initialisation (`--fixed-init`), one full "
            f"batch a step (batch {FULL_BATCH}): {args.fixed_epochs} epochs a task, SGD lr "
            f"{args.fixed_lr}, the teacher's head x {args.teacher_scale:g} on both sides, CNN "
            "then NME"
        )
        fixed = ["--fixed-init", "--teacher-scale", str(args.teacher_scale)]
        for classifier in ("cnn", "nme"):
            reference, ours = sides(0, args.fixed_lr, classifier, fixed)
            print(f"\n{classifier}:")
            print_identical_table(reference[classifier], ours[classifier])
    if "trained" not in args.regimes or args.seeds <= 0:
        return
    print(
        f"\n## trained: {args.epochs} epochs a task, SGD lr {args.lr}, batch {args.batch}, "
        f"memory_size {args.memory}, CNN (the head, DGR's), seeds 0..{args.seeds - 1} a side"
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
        p.add_argument("--teacher-scale", type=float, default=1.0, help="teacher head x")
    if name == "compare":
        p.add_argument("--regimes", default="frozen,fixed,trained")
        p.add_argument("--fixed-lr", type=float, default=0.01)
        p.add_argument("--teacher-scale", type=float, default=1.5)
        p.add_argument("--fixed-epochs", type=int, default=20)
        p.add_argument("--nme", action="store_true", help="also cilbench's classifier=nme")


def main() -> None:
    harness_main(
        __doc__, run_pilot, run_cilbench, compare, add_arguments=_arguments,
        settings={"fixed_init": False, "teacher_scale": 1.0},
    )  # fmt: skip


if __name__ == "__main__":
    main()
