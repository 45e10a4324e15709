"""EASE parity: LAMDA-PILOT's own `models/ease.py` and cilbench's `ease` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's (`fecam.py inputs OUT`):

  pilot   --pilot DIR ...     run PILOT's EASE learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's ease through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), table and Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py. On the PILOT side only the backbone factory
(`utils.inc_net.get_backbone`: the small ViT built with PILOT's own `backbone/vit_ease.py` class,
loaded from the saved weights), the dataset lookup (`utils.data_manager._get_idata`) and the loader
worker count (`models.ease.num_workers = 0`) are replaced, `EaseCosineLinear.forward_reweight`
gets the ViT's width (PILOT calls it with the default `out_dim=768`, ViT-B's) and the learner's
`topk` is 1 (top-5 of 2 classes fails); nothing is copied from the reference.
Hyper-parameters: PILOT's exps/ease.json (SGD momentum 0.9, weight decay 5e-4, cosine to 0,
alpha 0.1, beta 0, recalc_sim, use_reweight, no pre-trained subspace) with the adapter bottleneck
at 16 and the epochs, learning rate and batch of the command line.
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
    INCREMENT,
    VIT,
    drive_pilot,
    harness_idata,
    load_pilot_vit,
    run_strategy,
)

BOTTLENECK = 16


def run_pilot(pilot: Path, inputs: Path, epochs: int, lr: float, batch: int, seed: int) -> dict:
    """PILOT's EASE learner on the npz stream; accuracy over seen classes after each task."""
    import torch

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules (and its dependency easydict)
    import models.ease as ease
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net
    from backbone import linears, vit_ease
    from easydict import EasyDict

    HarnessData = harness_idata(inputs)

    def get_backbone(args: dict, pretrained: bool = False) -> Any:
        """PILOT's EASE ViT at the small size (its tuning config from utils/inc_net.py)."""
        config = EasyDict(
            ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
            ffn_adapter_init_option="lora", ffn_adapter_scalar="0.1", ffn_num=args["ffn_num"],
            d_model=VIT["embed_dim"], vpt_on=False, vpt_num=0, _device=args["device"][0],
        )  # fmt: skip
        model = vit_ease.VisionTransformer(
            img_size=VIT["img_size"], patch_size=VIT["patch_size"], embed_dim=VIT["embed_dim"],
            depth=VIT["depth"], num_heads=VIT["num_heads"], mlp_ratio=4, qkv_bias=True,
            num_classes=0, global_pool=False, drop_path_rate=0.0, tuning_config=config,
        )  # fmt: skip
        return load_pilot_vit(model, inputs, "cur_adapter")

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: HarnessData()
    ease.num_workers = 0
    # EaseNet.forward calls forward_reweight without out_dim, whose default is ViT-B's 768: with
    # any other width the loop over subspaces runs zero times. Pass the small ViT's width.
    reweight = linears.EaseCosineLinear.forward_reweight
    linears.EaseCosineLinear.forward_reweight = lambda self, x, **kw: reweight(
        self, x, **{**kw, "out_dim": VIT["embed_dim"]}
    )
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": 0, "memory_per_class": 0,
        "fixed_memory": False, "shuffle": False, "init_cls": INCREMENT, "increment": INCREMENT,
        "model_name": "ease", "backbone_type": "vit_base_patch16_224_ease",
        "device": [torch.device("cpu")], "seed": seed, "init_epochs": epochs, "init_lr": lr,
        "later_epochs": epochs, "later_lr": lr, "batch_size": batch, "weight_decay": 5e-4,
        "min_lr": 0, "optimizer": "sgd", "scheduler": "cosine", "ffn_num": BOTTLENECK,
        "use_diagonal": False, "recalc_sim": True, "alpha": 0.1, "use_init_ptm": False, "beta": 0,
        "use_old_data": False, "use_reweight": True, "moni_adam": False, "adapter_num": -1,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = ease.Learner(args)
    learner.topk = 1  # top-5 of 2 classes fails in torch.topk; only top-1 is read
    return {"side": "pilot", "seed": seed, "accuracy": drive_pilot(learner, manager)}


def run_cilbench(inputs: Path, epochs: int, lr: float, batch: int, seed: int) -> dict:
    """cilbench's ease through cilbench.run on the same npz stream and weights."""
    overrides = {
        "epochs": epochs, "lr": lr, "batch_size": batch, "weight_decay": 5e-4, "min_lr": 0.0,
        "adapter_bottleneck": BOTTLENECK, "augment.preset": "none", "recipe": "pilot",
        "alpha": 0.1, "beta": 0.0, "use_init_ptm": False, "recompute_similarity": True,
        "reweight": True,
    }  # fmt: skip
    accuracy = run_strategy(inputs, "ease", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": accuracy}


def compare(args: argparse.Namespace) -> None:
    from scipy import stats

    here = Path(__file__).resolve()
    common = ["--inputs", str(args.inputs), "--batch", str(args.batch)]

    def start(python: str, name: str, seed: int, lr: float, extra: list[str]) -> subprocess.Popen:
        command = [python, str(here), name, *common, "--epochs", str(args.epochs)]
        command += ["--lr", str(lr), "--seed", str(seed), *extra]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(process: subprocess.Popen) -> list[float]:
        out, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{process.args[2]} failed:\n{err.decode()[-3000:]}")
        return json.loads(out.decode().strip().splitlines()[-1])["accuracy"]

    def both(seed: int, lr: float) -> tuple[list[float], list[float]]:
        """The two sides of one seed side by side (one process each)."""
        runs = start(args.pilot_python, "pilot", seed, lr, ["--pilot", str(args.pilot)])
        mine = start(sys.executable, "cilbench", seed, lr, [])
        return result(runs), result(mine)

    print("## adapters frozen at zero (lr 0 on both sides): deterministic")
    reference, ours = both(0, 0.0)
    print("| task | PILOT | cilbench |\n|---|---|---|")
    for t, (a, b) in enumerate(zip(reference, ours)):
        print(f"| {t} | {a:.2f} | {b:.2f} |")
    if args.seeds <= 0:
        return
    print(
        f"\n## adapters trained every task: {args.epochs} epochs, SGD lr {args.lr}, batch "
        f"{args.batch}, seeds 0..{args.seeds - 1} a side"
    )
    pairs = [both(s, args.lr) for s in range(args.seeds)]
    ref, cil = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    print("| task | PILOT mean ± sd | cilbench mean ± sd | Welch p |\n|---|---|---|---|")
    for t in range(ref.shape[1]):
        a, b = ref[:, t], cil[:, t]
        if a.std() == 0 and b.std() == 0:  # no spread on either side: the t-test is undefined
            p = 1.0 if a[0] == b[0] else 0.0
        else:
            p = stats.ttest_ind(a, b, equal_var=False).pvalue
        print(
            f"| {t} | {a.mean():.2f} ± {a.std(ddof=1):.2f} | "
            f"{b.mean():.2f} ± {b.std(ddof=1):.2f} | {p:.3f} |"
        )
    print("\nper seed PILOT:", ref.round(2).tolist(), "\nper seed cilbench:", cil.round(2).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True, help="from `fecam.py inputs`")
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--lr", type=float, default=0.025)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "pilot":
        result = run_pilot(args.pilot, args.inputs, args.epochs, args.lr, args.batch, args.seed)
        print(json.dumps(result))
    elif args.command == "cilbench":
        result = run_cilbench(args.inputs, args.epochs, args.lr, args.batch, args.seed)
        print(json.dumps(result))
    else:
        compare(args)


if __name__ == "__main__":
    main()
