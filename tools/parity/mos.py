"""MOS parity: LAMDA-PILOT's own `models/mos.py` and cilbench's `mos` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's MOS learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's mos through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), tables and Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py. On the PILOT side only these are replaced: the
backbone factory (`utils.inc_net.get_backbone`: the small ViT built with PILOT's own
`backbone/vit_mos.py` class, loaded from the saved weights), the dataset lookup
(`utils.data_manager._get_idata`), the loader worker count (`models.mos.num_workers = 0`),
`MOSNet`'s feature width (hard-coded 768, ViT-B's: set to the small ViT's) and the learner's
`topk` (1; top-5 of 2 classes fails). With `--fixed-head` (the deterministic regime) both sides
start the linear head from the same seeded rows instead of their own random initialisation.
Hyper-parameters: PILOT's exps/mos.json (SGD momentum 0.9, cosine to 0, reg 0.1, adapter_momentum
0.1, ensemble, covariance storage, bottleneck 16) with the epochs, learning rates, batch and weight
decay of the command line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fecam import (
    CLASSES,
    INCREMENT,
    VIT,
    drive_learner,
    harness_idata,
    load_pilot_vit,
    run_strategy,
    welch_table,
)

BOTTLENECK = 16


def fixed_head() -> tuple[Any, Any]:
    """Seeded head rows (CLASSES, D) and biases, nn.Linear's uniform(-1/sqrt D, 1/sqrt D)."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    bound = VIT["embed_dim"] ** -0.5
    weight = (torch.rand(CLASSES, VIT["embed_dim"], generator=generator) * 2 - 1) * bound
    bias = (torch.rand(CLASSES, generator=generator) * 2 - 1) * bound
    return weight, bias


def run_pilot(pilot: Path, inputs: Path, args: argparse.Namespace) -> dict:
    """PILOT's MOS learner on the npz stream; accuracy over seen classes after each task."""
    import torch

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules (and its dependency easydict)
    import models.mos as mos
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net
    from backbone import vit_mos
    from easydict import EasyDict

    HarnessData = harness_idata(inputs)

    def get_backbone(settings: dict, pretrained: bool = False) -> Any:
        """PILOT's MOS ViT at the small size (its tuning config from utils/inc_net.py)."""
        config = EasyDict(
            ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
            ffn_adapter_init_option="lora", ffn_adapter_scalar="0.1", ffn_num=settings["ffn_num"],
            d_model=VIT["embed_dim"], _device=settings["device"][0],
            adapter_momentum=settings["adapter_momentum"], vpt_on=False, vpt_num=0,
        )  # fmt: skip
        model = vit_mos.VisionTransformer(
            img_size=VIT["img_size"], patch_size=VIT["patch_size"], embed_dim=VIT["embed_dim"],
            depth=VIT["depth"], num_heads=VIT["num_heads"], mlp_ratio=4, qkv_bias=True,
            num_classes=settings["nb_classes"], global_pool=False, drop_path_rate=0.0,
            tuning_config=config,
        )  # fmt: skip
        return load_pilot_vit(model, inputs, ("cur_adapter", "head."))

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: HarnessData()
    mos.num_workers = 0
    settings = {
        "prefix": "parity", "dataset": "harness", "memory_size": 0, "memory_per_class": 0,
        "fixed_memory": False, "shuffle": False, "init_cls": INCREMENT, "increment": INCREMENT,
        "model_name": "mos", "backbone_type": "vit_base_patch16_224_mos",
        "device": [torch.device("cpu")], "seed": args.seed, "tuned_epoch": args.epochs,
        "init_lr": args.lr, "batch_size": args.batch, "weight_decay": args.weight_decay,
        "min_lr": 0, "optimizer": "sgd", "scheduler": "cosine", "reinit_optimizer": True,
        "init_milestones": [10], "init_lr_decay": 0.1, "reg": 0.1,
        "adapter_momentum": args.adapter_momentum, "ensemble": True,
        "crct_epochs": args.ca_epochs, "ca_lr": args.ca_lr,
        "ca_storage_efficient_method": "covariance", "n_centroids": 10, "pretrained": True,
        "drop": 0.0, "drop_path": 0.0, "ffn_num": BOTTLENECK,
    }  # fmt: skip
    torch.manual_seed(args.seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, args.seed, INCREMENT, INCREMENT, settings)
    settings["nb_classes"] = manager.nb_classes  # trainer.py
    learner = mos.Learner(settings)
    learner._network.backbone.out_dim = VIT["embed_dim"]  # MOSNet hard-codes ViT-B's 768
    learner.topk = 1  # top-5 of 2 classes fails in torch.topk; only top-1 is read
    if args.fixed_head:
        weight, bias = fixed_head()
        with torch.no_grad():
            learner._network.backbone.head.weight.copy_(weight)
            learner._network.backbone.head.bias.copy_(bias)
    drift: list = []
    if args.report_drift:
        watch_test_adapters(mos.Learner, drift)
    result = {"side": "pilot", "seed": args.seed, "accuracy": drive_learner(learner, manager)}
    return {**result, "drift": drift} if args.report_drift else result


def watch_test_adapters(learner_class: Any, drift: list) -> None:
    """Wrap the learner's `_eval_cnn` to record, for every stored adapter t >= 1 after each
    evaluation: how far the evaluation moved it and its distance to the mean of snapshots
    0..t-1 before and after (max |difference| over layer 0's down-projection weight)."""
    evaluate = learner_class._eval_cnn

    def watched(self: Any, loader: Any) -> Any:
        backbone = self._network.backbone
        weights = [a[0].down_proj.weight.detach().clone() for a in backbone.adapter_list]
        out = evaluate(self, loader)
        for t, before in enumerate(weights[1:], start=1):
            after = backbone.adapter_list[t][0].down_proj.weight.detach()
            mean = backbone.down_weight_sum[0][t - 1] / t
            gaps = [(after - before), (before - mean), (after - mean)]
            drift.append([self._cur_task, t, *(float(g.abs().max()) for g in gaps)])
        return out

    learner_class._eval_cnn = watched


def run_cilbench(inputs: Path, args: argparse.Namespace) -> dict:
    """cilbench's mos through cilbench.run on the same npz stream and weights."""
    if args.fixed_head:
        from cilbench.strategies.mos import MOS, LinearHead

        weight, bias = fixed_head()

        def grow_head(self: Any, count: int, generator: Any) -> None:
            rows = slice(0, self.head.weight.shape[0] + count)
            self.head = LinearHead(weight[rows], bias[rows]).to(self.device)

        MOS._grow_head = grow_head  # type: ignore[method-assign]
    overrides = {
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch,
        "weight_decay": args.weight_decay, "min_lr": 0.0, "adapter_bottleneck": BOTTLENECK,
        "augment.preset": "none", "recipe": "pilot", "reg": 0.1,
        "adapter_momentum": args.adapter_momentum, "ensemble": True,
        "ca_epochs": args.ca_epochs, "ca_lr": args.ca_lr, "ca_storage": "covariance",
    }  # fmt: skip
    accuracy = run_strategy(inputs, "mos", overrides, args.seed)
    return {"side": "cilbench", "seed": args.seed, "accuracy": accuracy}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(python: str, name: str, seed: int, settings: dict) -> subprocess.Popen:
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        for key, value in settings.items():
            if value is True:
                command.append(f"--{key}")
            elif value is not False:
                command += [f"--{key}", str(value)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(process: subprocess.Popen) -> list[float]:
        out, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{process.args[2]} failed:\n{err.decode()[-3000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])["accuracy"]

    def both(seed: int, settings: dict) -> tuple[list[float], list[float]]:
        """The two sides of one seed side by side (one process each)."""
        runs = start(args.pilot_python, "pilot", seed, {**settings, "pilot": args.pilot})
        mine = start(sys.executable, "cilbench", seed, settings)
        return result(runs), result(mine)

    common = {"batch": args.batch, "weight-decay": args.weight_decay}
    frozen = {**common, "epochs": 1, "lr": 0.0, "ca-epochs": 1, "ca-lr": 0.0, "fixed-head": True,
              "adapter-momentum": args.adapter_momentum}  # fmt: skip
    print("## adapters at zero, head fixed (lr 0, ca_lr 0, same seeded head rows): deterministic")
    reference, ours = both(0, frozen)
    print("| task | PILOT | cilbench |\n|---|---|---|")
    for t, (a, b) in enumerate(zip(reference, ours)):
        print(f"| {t} | {a:.2f} | {b:.2f} |")
    trained = {**common, "epochs": args.epochs, "lr": args.lr, "ca-epochs": args.ca_epochs,
               "ca-lr": args.ca_lr, "adapter-momentum": args.adapter_momentum}  # fmt: skip
    for momentum in dict.fromkeys([args.adapter_momentum, *args.also_momentum]):
        if args.seeds <= 0:
            return
        trained["adapter-momentum"] = momentum
        print(
            f"\n## trained: {args.epochs} epochs SGD lr {args.lr} (head x 0.1), batch "
            f"{args.batch}, adapter_momentum {momentum}, {args.ca_epochs} CA epochs at ca_lr "
            f"{args.ca_lr}, seeds 0..{args.seeds - 1} a side"
        )
        pairs = [both(s, trained) for s in range(args.seeds)]
        welch_table(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True, help="from `fecam.py inputs`")
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--lr", type=float, default=0.03)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--weight-decay", type=float, default=5e-4)
        p.add_argument("--adapter-momentum", type=float, default=0.1)
        p.add_argument("--ca-epochs", type=int, default=3)
        p.add_argument("--ca-lr", type=float, default=0.005)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--fixed-head", action="store_true")
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name == "pilot":
            p.add_argument("--report-drift", action="store_true", help=watch_test_adapters.__doc__)
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=3)
            p.add_argument("--also-momentum", type=float, nargs="*", default=[])
    args = parser.parse_args()
    if args.command == "pilot":
        print(json.dumps(run_pilot(args.pilot, args.inputs, args)))
    elif args.command == "cilbench":
        print(json.dumps(run_cilbench(args.inputs, args)))
    else:
        compare(args)


if __name__ == "__main__":
    main()
