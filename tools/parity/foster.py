"""FOSTER parity: LAMDA-PILOT's own `models/foster.py` and cilbench's `foster` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's FOSTER learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's foster through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), tables and Welch t-test
  memory  [--arch A --batch B] the training memory each phase needs, estimated on the meta device

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py; `memory_per_class` exemplars (PILOT's
`fixed_memory` true, as exps/foster*.json). On the PILOT side the harness replaces the backbone
factory (`utils.inc_net.get_backbone`: timm 0.6's `VisionTransformer` at the small size, loaded
from vit.pt, `out_dim` its width), the dataset lookup (`utils.data_manager._get_idata`),
`DataManager.getlen` (PILOT's sums the positions of a class's images, `np.sum(np.where(y == c))`;
the harness counts them, as the paper's n_c and cilbench do) and `learner.topk = 1` (top-5 of 2
classes fails in `torch.topk`; the student's log line then finds no "top5" entry, which a
wrapper of `learner._evaluate` adds as None). PILOT's
trainer evaluates `learner._network` (the boosted teacher); the compressed student (`_snet`) is
read as well, with the same `_eval_cnn`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fecam import (
    INCREMENT,
    harness_idata,
    print_seed_table,
    run_strategy,
    vit_arguments,
)


def drive(learner: Any, manager: Any) -> dict[str, Any]:
    """PILOT's learner through every task as `trainer.py` drives it; after each task the top-1
    accuracy of the teacher (`_network`, what the trainer reports) and of the student (`_snet`,
    the same network after task 0), and the class-balanced weights of both phases."""
    out: dict[str, Any] = {"teacher": [], "student": [], "weights": {}, "matrix": []}
    boosting = learner._feature_boosting

    def record(*args: Any) -> None:
        out["weights"][f"{learner._cur_task}.boosting"] = learner.per_cls_weights.tolist()
        boosting(*args)

    learner._feature_boosting = record
    with tempfile.TemporaryDirectory() as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            for task in range(manager.nb_tasks):
                learner.incremental_train(manager)
                teacher, truth = learner._eval_cnn(learner.test_loader)
                out["teacher"].append(float((teacher[:, 0] == truth).mean() * 100))
                right = teacher[:, 0] == truth  # per task's classes: the accuracy matrix row
                tasks = truth // INCREMENT
                out["matrix"].append(
                    [float(right[tasks == j].mean() * 100) for j in range(task + 1)]
                )
                if task > 0:
                    out["weights"][f"{task}.compression"] = learner.per_cls_weights.tolist()
                    network = learner._network
                    learner._network = learner._snet
                    student, _ = learner._eval_cnn(learner.test_loader)
                    learner._network = network
                    out["student"].append(float((student[:, 0] == truth).mean() * 100))
                else:
                    out["student"].append(out["teacher"][-1])
                learner.after_task()
        finally:
            os.chdir(cwd)
    return out


def run_pilot(pilot: Path, inputs: Path, settings: dict, seed: int) -> dict:
    """PILOT's FOSTER learner on the npz stream."""
    import numpy as np
    import torch
    from timm.models.vision_transformer import VisionTransformer

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import models.foster as foster
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net

    vit = vit_arguments(inputs)

    def get_backbone(args: dict, pretrained: bool = False) -> torch.nn.Module:
        """PILOT's `vit_base_patch16_224` branch at the small size: a timm ViT, weights vit.pt."""
        model = VisionTransformer(num_classes=0, **vit)
        model.load_state_dict(torch.load(inputs / "vit.pt", map_location="cpu"), strict=True)
        model.out_dim = vit["embed_dim"]
        return model.eval()

    def getlen(self: Any, index: int) -> int:
        """The number of training images of class `index` (PILOT sums their positions)."""
        return int(np.sum(self._train_targets == index))

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: harness_idata(inputs)()
    data_manager.DataManager.getlen = getlen
    epochs, lr = settings["epochs"], settings["lr"]
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": 2000,
        "memory_per_class": settings["memory"], "fixed_memory": True, "shuffle": False,
        "init_cls": INCREMENT, "increment": INCREMENT, "model_name": "foster",
        "backbone_type": "vit_base_patch16_224", "device": [torch.device("cpu")], "seed": seed,
        "beta1": 0.96, "beta2": 0.97, "oofc": "ft", "is_teacher_wa": False,
        "is_student_wa": False, "lambda_okd": 1, "wa_value": 1, "init_epochs": epochs,
        "init_lr": lr, "init_weight_decay": 5e-4, "boosting_epochs": epochs,
        "compression_epochs": epochs, "lr": lr, "batch_size": settings["batch"],
        "weight_decay": 5e-4, "num_workers": 0, "T": 2,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = foster.Learner(args)
    learner.topk = 1
    evaluate = learner._evaluate  # the student's log line reads "top5", absent at topk 1
    learner._evaluate = lambda y_pred, y_true: {"top5": None, **evaluate(y_pred, y_true)}
    return {"side": "pilot", "seed": seed, **drive(learner, manager)}


def run_cilbench(inputs: Path, settings: dict, seed: int, predict_with: str) -> dict:
    """cilbench's foster through cilbench.run on the same npz stream and weights."""
    epochs, lr = settings["epochs"], settings["lr"]
    overrides = {
        "first_epochs": epochs, "epochs": epochs, "compression_epochs": epochs,
        "first_lr": lr, "lr": lr, "batch_size": settings["batch"], "first_weight_decay": 5e-4,
        "weight_decay": 5e-4, "beta1": 0.96, "beta2": 0.97, "temperature": 2.0,
        "lambda_okd": 1.0, "oofc": "ft", "memory_per_class": settings["memory"],
        "selection": "herding", "predict_with": predict_with, "recipe": "pilot",
        "augment.preset": "none",
    }  # fmt: skip
    results: list = []
    accuracy = run_strategy(inputs, "foster", overrides, seed, results=results)
    report = results[0].strategy_report
    return {
        "side": "cilbench",
        "seed": seed,
        predict_with: accuracy,
        "weights": report["class_weights"],
        "matrix": results[0].accuracy_matrix,
        "losses": report["epoch_losses"],
    }


def side_output(process: subprocess.Popen) -> dict:
    """The JSON line a side's subprocess printed last."""
    out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"{process.args[2]} failed:\n{err.decode()[-3000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(python: str, name: str, seed: int, lr: float, extra: list[str]) -> subprocess.Popen:
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        command += ["--epochs", str(args.epochs), "--batch", str(args.batch), "--lr", str(lr)]
        command += ["--memory", str(args.memory)]
        command = ["nice", "-n", "5", *command]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sides(seed: int, lr: float, predict_with: str) -> tuple[dict, dict]:
        """PILOT (teacher and student) and cilbench (one of them) for one seed, side by side."""
        runs = start(args.pilot_python, "pilot", seed, lr, ["--pilot", str(args.pilot)])
        mine = start(sys.executable, "cilbench", seed, lr, ["--predict-with", predict_with])
        return side_output(runs), side_output(mine)

    print(f"## class-balanced weights (lr {args.frozen_lr:g}), memory_per_class {args.memory}")
    reference, ours = sides(0, args.frozen_lr, "teacher")
    print("| phase | PILOT | cilbench | max abs difference |\n|---|---|---|---|")
    for key, weights in reference["weights"].items():
        mine = ours["weights"][key]
        gap = max(abs(a - b) for a, b in zip(weights, mine))
        print(f"| {key} | {[round(w, 6) for w in weights]} | {[round(w, 6) for w in mine]} "
              f"| {gap:.1e} |")  # fmt: skip
    if args.seeds <= 0:
        return
    print(
        f"\n## trained: {args.epochs} epochs a phase, SGD lr {args.lr}, batch {args.batch}, "
        f"memory_per_class {args.memory}, teacher (PILOT's evaluated network), seeds "
        f"0..{args.seeds - 1} a side"
    )
    pairs = [sides(s, args.lr, "teacher") for s in range(args.seeds)]
    print_seed_table([(p["teacher"], c["teacher"]) for p, c in pairs])
    print("\naccuracy on each task's classes after each task (rows), per seed:")
    for seed, (reference, ours) in enumerate(pairs):
        mine = [[round(a, 1) for a in row if a is not None] for row in ours["matrix"]]
        print(f"seed {seed}: PILOT {[[round(a, 1) for a in r] for r in reference['matrix']]}, "
              f"cilbench {mine}")  # fmt: skip
    if not args.student:
        return
    print("\n## the same, the compressed student (PILOT's `_snet` from the runs above)")
    student = []
    for seed, (reference, _) in enumerate(pairs):
        mine = start(sys.executable, "cilbench", seed, args.lr, ["--predict-with", "student"])
        student.append((reference["student"], side_output(mine)["student"]))
    print_seed_table(student)


def memory(arch: str, batch: int, size: int) -> None:
    """Bytes each FOSTER phase holds while training `arch` (fp32 weights, SGD with momentum),
    counted on the meta device (no weights, no compute): the parameters, and the tensors the
    trained backbone's forward pass saves for backward at `batch` images of `size` px (an upper
    bound: a tensor saved by two operations counts twice). The frozen backbones save nothing."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=0)
        images = torch.empty(batch, 3, size, size)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    activations = sum(saved)
    trained = 3 * weights + activations  # weights, gradients, momentum, saved activations
    gb = 1e9
    print(
        f"{arch}: {weights / gb:.2f} GB of fp32 weights a backbone; the trained backbone's "
        f"saved activations at batch {batch}, {size} px: <= {activations / gb:.2f} GB (fp32)"
    )
    print(f"experience 0: one trained backbone: {trained / gb:.2f} GB")
    print(f"boosting: the frozen old backbone + a trained one: {(weights + trained) / gb:.2f} GB")
    print(f"compression: two frozen teacher backbones + the trained student: "
          f"{(2 * weights + trained) / gb:.2f} GB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True)
        p.add_argument("--epochs", type=int, default=3, help="epochs of every phase")
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--memory", type=int, default=10, help="memory_per_class")
        p.add_argument("--seed", type=int, default=0)
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name == "cilbench":
            p.add_argument("--predict-with", default="teacher", choices=("teacher", "student"))
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=5)
            p.add_argument("--frozen-lr", type=float, default=1e-12)
            p.add_argument("--student", action="store_true", help="also predict_with=student")
    estimate = sub.add_parser("memory")
    estimate.add_argument("--arch", default="vit_base_patch16_224")
    estimate.add_argument("--batch", type=int, default=32)
    estimate.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    if args.command == "memory":
        memory(args.arch, args.batch, args.size)
        return
    settings = {"epochs": args.epochs, "lr": args.lr, "batch": args.batch, "memory": args.memory}
    if args.command == "pilot":
        result = run_pilot(args.pilot, args.inputs, settings, args.seed)
    elif args.command == "cilbench":
        result = run_cilbench(args.inputs, settings, args.seed, args.predict_with)
    else:
        compare(args)
        return
    print(json.dumps(result))


if __name__ == "__main__":
    main()
