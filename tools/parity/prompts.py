"""L2P and CODA-Prompt parity: LAMDA-PILOT's own `models/l2p.py` and `models/coda_prompt.py` and
cilbench's `l2p` and `coda-prompt` with their `pilot` settings, on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's with a 6-block ViT
(`fecam.py inputs OUT --depth 6`: PILOT's CODA-Prompt prefixes blocks 0-4, hard-coded):

  pilot    --pilot DIR --method l2p|coda ...   run PILOT's learner (timm 0.6.x venv), print JSON
  cilbench --method l2p|coda ...               run cilbench's strategy through cilbench.run
  compare  --pilot DIR ...                     both methods, both sides over seeds, Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py. On the PILOT side the harness replaces:
the backbone factory (`utils.inc_net.get_backbone`: the small ViT built with PILOT's own
`backbone/vit_l2p.VisionTransformer` (prompt pool, `head_type="prompt"`) or
`backbone/vit_coda_promtpt.VisionTransformer`, loaded from vit.pt; L2P's weights pass through
PILOT's own `checkpoint_filter_fn`, which gives the prompt positions the [CLS] position),
`PromptVitNet.get_original_backbone` (L2P's query ViT: the same small ViT without prompts),
the dataset lookup (`utils.data_manager._get_idata`), the loader worker counts
(`num_workers = 0`), CODA's width-768 pieces (`CodaPromptVitNet` builds `fc = nn.Linear(768, C)`
and `CodaPrompt(768, ...)`: rebuilt at the small ViT's width after the learner is built, with
PILOT's own classes) and `learner.topk = 1` (top-5 of 2 classes fails in `torch.topk`).
cilbench runs `recipe=pilot` (the split-cifar100 recipe's strategy settings, by fallback) with
the harness's epochs, lr, batch and (CODA) 12 components: 100 do not fit a 64-wide key
(PILOT's Gram-Schmidt then redraws forever).

What stays different (see the strategies' docstrings): PILOT's test loader holds every seen
class in label order in batches of the training batch size, so its batch vote (L2P) groups
images across task boundaries; cilbench votes within each task's test set (eval batch
`--eval-batch`). Random draws (prompts, keys, heads, shuffling) come from each side's own
generators, hence the seeds and the t-test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fecam import (
    CLASSES,
    INCREMENT,
    accuracy_of,
    drive_learner,
    harness_idata,
    print_seed_table,
    run_strategy,
    vit_arguments,
)

COMPONENTS, CODA_LENGTH = 12, 8
L2P_POOL, L2P_LENGTH, L2P_TOP_K = 10, 5, 5  # exps/l2p.json


def _small_vit(module: Any, inputs: Path, **extra: Any) -> Any:
    """One of PILOT's ViT classes at the saved ViT's size."""
    vit = vit_arguments(inputs)
    return module.VisionTransformer(
        img_size=vit["img_size"], patch_size=vit["patch_size"], embed_dim=vit["embed_dim"],
        depth=vit["depth"], num_heads=vit["num_heads"], mlp_ratio=4, qkv_bias=True, **extra,
    )  # fmt: skip


def _load(model: Any, inputs: Path, trainable: tuple[str, ...], filter_fn: Any = None) -> Any:
    """vit.pt (timm names) into a PILOT ViT; only parameters named by `trainable` may be missing."""
    import torch

    state = torch.load(inputs / "vit.pt", map_location="cpu")
    if filter_fn is not None:
        state = filter_fn(state, model)
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert all(k.startswith(trainable) for k in missing), missing
    return model


class _CpuZeros(types.ModuleType):
    """`torch` for PILOT's `vit_coda_promtpt`, whose `forward` starts `prompt_loss` as
    `torch.zeros((1,), requires_grad=True).to(device)`: on the CPU `.to` keeps that leaf and the
    in-place `+=` fails (on CUDA it makes a copy). Here the same zero is made without
    `requires_grad`; everything else is torch's own."""

    def __getattr__(self, name: str) -> Any:
        import torch

        return getattr(torch, name)

    @staticmethod
    def zeros(*size: Any, requires_grad: bool = False, **kwargs: Any) -> Any:
        import torch

        return torch.zeros(*size, **kwargs)


def _args(method: str, settings: dict, seed: int) -> dict:
    """PILOT's exps/l2p.json or exps/coda_prompt.json with the harness's epochs, lr and batch."""
    import torch

    common = {
        "prefix": "parity", "dataset": "harness", "memory_size": 0, "memory_per_class": 0,
        "fixed_memory": False, "shuffle": False, "init_cls": INCREMENT, "increment": INCREMENT,
        "device": [torch.device("cpu")], "seed": seed, "tuned_epoch": settings["epochs"],
        "init_lr": settings["lr"], "batch_size": settings["batch"], "weight_decay": 0,
        "min_lr": 1e-5, "optimizer": "adam", "reinit_optimizer": True, "pretrained": True,
        "drop": 0.0, "drop_path": 0.0, "nb_classes": CLASSES, "nb_tasks": CLASSES // INCREMENT,
    }  # fmt: skip
    if method == "coda":
        return {
            **common, "model_name": "coda_prompt", "scheduler": "cosine",
            "backbone_type": "vit_base_patch16_224_coda_prompt",
            "prompt_param": [COMPONENTS, float(CODA_LENGTH), 0.0],
        }  # fmt: skip
    return {
        **common, "model_name": "l2p", "backbone_type": "vit_base_patch16_224_l2p",
        "get_original_backbone": True, "scheduler": "constant", "global_pool": "token",
        "head_type": "prompt",
        "freeze": ["blocks", "patch_embed", "cls_token", "norm", "pos_embed"],
        "prompt_pool": True, "size": L2P_POOL, "length": L2P_LENGTH, "top_k": L2P_TOP_K,
        "initializer": "uniform", "prompt_key": True, "prompt_key_init": "uniform",
        "use_prompt_mask": False, "shared_prompt_pool": False, "shared_prompt_key": False,
        "batchwise_prompt": True, "embedding_key": "cls", "predefined_key": "",
        "pull_constraint": True, "pull_constraint_coeff": 0.1,
    }  # fmt: skip


def run_pilot(pilot: Path, inputs: Path, method: str, settings: dict, seed: int) -> dict:
    """PILOT's L2P or CODA-Prompt learner on the npz stream; accuracy over seen classes."""
    import torch

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net
    from backbone import prompt as pilot_prompt
    from backbone import vit_coda_promtpt, vit_l2p

    args = _args(method, settings, seed)

    def l2p_vit(args: dict, pretrained: bool = False) -> torch.nn.Module:
        model = _small_vit(
            vit_l2p, inputs, num_classes=CLASSES, prompt_length=L2P_LENGTH,
            embedding_key="cls", prompt_init="uniform", prompt_pool=True, prompt_key=True,
            pool_size=L2P_POOL, top_k=L2P_TOP_K, batchwise_prompt=args["batchwise_prompt"],
            prompt_key_init="uniform", head_type="prompt", use_prompt_mask=False,
        )  # fmt: skip
        return _load(model, inputs, ("prompt.", "head."), vit_l2p.checkpoint_filter_fn)

    def query_vit(self: Any, args: dict) -> torch.nn.Module:
        model = _small_vit(vit_l2p, inputs, num_classes=CLASSES)
        return _load(model, inputs, ("head.",)).eval()

    def coda_vit(args: dict, pretrained: bool = False) -> torch.nn.Module:
        return _load(_small_vit(vit_coda_promtpt, inputs, num_classes=0), inputs, ("head.",))

    inc_net.get_backbone = l2p_vit if method == "l2p" else coda_vit
    vit_coda_promtpt.torch = _CpuZeros("torch")
    inc_net.PromptVitNet.get_original_backbone = query_vit
    data_manager._get_idata = lambda name, args=None: harness_idata(inputs)()
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    if method == "l2p":
        import models.l2p as module
    else:
        import models.coda_prompt as module  # type: ignore[no-redef]
    module.num_workers = 0
    learner = module.Learner(args)
    learner.topk = 1
    if method == "coda":  # the width-768 pieces at the small ViT's width (PILOT's own classes)
        dim = vit_arguments(inputs)["embed_dim"]
        network = learner._network
        network.fc = torch.nn.Linear(dim, CLASSES)
        network.prompt = pilot_prompt.CodaPrompt(dim, args["nb_tasks"], args["prompt_param"], dim)
    return {"side": "pilot", "seed": seed, "accuracy": drive_learner(learner, manager)}


def cilbench_overrides(method: str, settings: dict, extra: dict) -> dict:
    """cilbench's `pilot` recipe (by fallback: its strategy settings) at the harness's sizes."""
    overrides: dict[str, Any] = {
        "recipe": "pilot", "augment.preset": "none", "epochs": settings["epochs"],
        "lr": settings["lr"], "batch_size": settings["batch"],
    }  # fmt: skip
    if method == "coda":
        overrides |= {"components": COMPONENTS, "prompt_length": CODA_LENGTH}
    return {**overrides, **extra}


def run_cilbench(inputs: Path, method: str, settings: dict, seed: int, extra: dict) -> dict:
    strategy = "l2p" if method == "l2p" else "coda-prompt"
    overrides = cilbench_overrides(method, settings, extra)
    accuracy = run_strategy(inputs, strategy, overrides, seed, settings["eval_batch"])
    return {"side": "cilbench", "seed": seed, "accuracy": accuracy}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(python: str, name: str, method: str, seed: int, extra: list[str]) -> Any:
        command = [python, str(here), name, "--inputs", str(args.inputs), "--method", method]
        command += ["--seed", str(seed), "--epochs", str(args.epochs), "--lr", str(args.lr)]
        command += ["--batch", str(args.batch), "--eval-batch", str(args.eval_batch)]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    for method in args.methods:
        variants = [args.set, *args.ablate]
        print(
            f"\n## {method}: {args.epochs} epochs a task, Adam lr {args.lr}, batch {args.batch}, "
            f"seeds 0..{args.seeds - 1} a side"
        )
        theirs, ours = [], {v: [] for v in variants}
        for seed in range(args.seeds):
            reference = start(
                args.pilot_python, "pilot", method, seed, ["--pilot", str(args.pilot)]
            )
            mine = {
                v: start(sys.executable, "cilbench", method, seed, ["--set", v]) for v in variants
            }
            theirs.append(accuracy_of(reference))
            for v, process in mine.items():
                ours[v].append(accuracy_of(process))
        for v in variants:
            print(f"\n### cilbench `recipe=pilot` {v}".rstrip())
            print_seed_table(list(zip(theirs, ours[v])))


def _parse_set(text: str) -> dict[str, str]:
    """`key=value,key=value` extra cilbench settings (an ablation of one pilot setting)."""
    return dict(item.split("=", 1) for item in text.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True)
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--eval-batch", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--set", default="", help="cilbench settings key=value,... (ablations)")
        if name == "compare":
            p.add_argument("--methods", nargs="+", default=["l2p", "coda"])
            p.add_argument("--seeds", type=int, default=3)
            p.add_argument("--ablate", nargs="*", default=[], help="more cilbench --set variants")
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
        else:
            p.add_argument("--method", choices=("l2p", "coda"), required=True)
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("epochs", "lr", "batch", "eval_batch")}
    if args.command == "pilot":
        print(json.dumps(run_pilot(args.pilot, args.inputs, args.method, settings, args.seed)))
    elif args.command == "cilbench":
        extra = _parse_set(args.set)
        print(json.dumps(run_cilbench(args.inputs, args.method, settings, args.seed, extra)))
    else:
        compare(args)


if __name__ == "__main__":
    main()
