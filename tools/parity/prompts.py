"""Prompt-method parity: LAMDA-PILOT's own `models/l2p.py`, `models/dualprompt.py` and
`models/coda_prompt.py` and cilbench's `l2p`, `dualprompt` and `coda-prompt` with their `pilot`
settings, on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's with a 6-block ViT
(`fecam.py inputs OUT --depth 6`: PILOT's CODA-Prompt prefixes blocks 0-4, hard-coded):

  pilot    --pilot DIR --method l2p|dual|coda  run PILOT's learner (timm 0.6.x venv), print JSON
  cilbench --method l2p|dual|coda ...          run cilbench's strategy through cilbench.run
  compare  --pilot DIR ...                     both methods, both sides over seeds, Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py. On the PILOT side the harness replaces:
the backbone factory (`utils.inc_net.get_backbone`: the small ViT built with PILOT's own
`backbone/vit_l2p.VisionTransformer` (prompt pool, `head_type="prompt"`),
`backbone/vit_dualprompt.VisionTransformer` (G-prompt on blocks 0-1, E-prompts on 2-4, prefix
tuning, `head_type="token"`) or `backbone/vit_coda_promtpt.VisionTransformer`, loaded from vit.pt;
L2P's weights pass through PILOT's own `checkpoint_filter_fn`, which gives the prompt positions
the [CLS] position), `PromptVitNet.get_original_backbone` (L2P's and DualPrompt's query ViT: the
same small ViT without prompts),
the dataset lookup (`utils.data_manager._get_idata`), the loader worker counts
(`num_workers = 0`), CODA's width-768 pieces (`CodaPromptVitNet` builds `fc = nn.Linear(768, C)`
and `CodaPrompt(768, ...)`: rebuilt at the small ViT's width after the learner is built, with
PILOT's own classes) and `learner.topk = 1` (top-5 of 2 classes fails in `torch.topk`).
cilbench runs `recipe=pilot` (the split-cifar100 recipe's strategy settings, by fallback) with
the harness's epochs, lr, batch and (CODA) 12 components: 100 do not fit a 64-wide key
(PILOT's Gram-Schmidt then redraws forever).

What stays different (see the strategies' docstrings): PILOT's test loader holds every seen
class in label order in batches of the training batch size, so its batch vote (L2P, DualPrompt)
groups images across task boundaries; cilbench votes within each task's test set (eval batch
`--eval-batch`). PILOT's DualPrompt swaps key/value and batch axes of its E-prompt prefixes
(LAMDA-PILOT#29; `--fix-reshape` corrects that at run time, `fix_e_prompt_reshape`). Random draws
(prompts, keys, heads, shuffling) come from each side's own generators, hence the seeds and the
t-test; `prompts_identical.py` removes them (identical initial tensors and data order).
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
DUAL_G_LENGTH, DUAL_G_LAYERS, DUAL_E_LAYERS, DUAL_TOP_K = 5, [0, 1], [2, 3, 4], 1  # dualprompt.json
METHODS = {"l2p": "l2p", "dual": "dualprompt", "coda": "coda-prompt"}


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
    """PILOT's exps/l2p.json, dualprompt.json or coda_prompt.json with the harness's epochs, lr
    and batch."""
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
    pool = {
        **common, "get_original_backbone": True, "scheduler": "constant", "global_pool": "token",
        "freeze": ["blocks", "patch_embed", "cls_token", "norm", "pos_embed"],
        "prompt_pool": True, "size": L2P_POOL, "length": L2P_LENGTH, "initializer": "uniform",
        "prompt_key": True, "prompt_key_init": "uniform", "shared_prompt_key": False,
        "batchwise_prompt": True, "embedding_key": "cls", "predefined_key": "",
        "pull_constraint": True, "pull_constraint_coeff": 0.1,
    }  # fmt: skip
    if method == "dual":
        return {
            **pool, "model_name": "dualprompt", "backbone_type": "vit_base_patch16_224_dualprompt",
            "head_type": "token", "top_k": DUAL_TOP_K, "use_prompt_mask": True,
            "shared_prompt_pool": True, "same_key_value": False, "use_g_prompt": True,
            "g_prompt_length": DUAL_G_LENGTH, "g_prompt_layer_idx": DUAL_G_LAYERS,
            "use_prefix_tune_for_g_prompt": True, "use_e_prompt": True,
            "e_prompt_layer_idx": DUAL_E_LAYERS, "use_prefix_tune_for_e_prompt": True,
        }  # fmt: skip
    return {
        **pool, "model_name": "l2p", "backbone_type": "vit_base_patch16_224_l2p",
        "head_type": "prompt", "top_k": L2P_TOP_K, "use_prompt_mask": False,
        "shared_prompt_pool": False,
    }  # fmt: skip


def fix_e_prompt_reshape(pilot_prompt: Any) -> None:
    """Correct PILOT's DualPrompt E-prompt layout at run time (LAMDA-PILOT#29): `EPrompt.forward`
    reshapes the picked prefixes (layers, 2, B, k, length, heads, hd) to (layers, B, 2, ...)
    without a permute. A reshape keeps memory order, so the picked tensor is recovered exactly
    from PILOT's output and permuted instead."""
    forward = pilot_prompt.EPrompt.forward

    def fixed(self: Any, *args: Any, **kwargs: Any) -> dict:
        out = forward(self, *args, **kwargs)
        if self.prompt_pool and self.use_prefix_tune_for_e_prompt:
            layers, batch, two, tokens, heads, width = out["batched_prompt"].shape
            picked = out["batched_prompt"].reshape(layers, two, batch, tokens, heads, width)
            out["batched_prompt"] = picked.permute(0, 2, 1, 3, 4, 5)
        return out

    pilot_prompt.EPrompt.forward = fixed


def pilot_learner(
    pilot: Path, inputs: Path, method: str, settings: dict, seed: int, fix_reshape: bool = False
) -> tuple[Any, Any, Any]:
    """(PILOT's L2P, DualPrompt or CODA-Prompt learner, its DataManager, the learner's module) on
    the npz stream, built as `trainer.py` builds them (after `torch.manual_seed(seed)`)."""
    import torch

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net
    from backbone import prompt as pilot_prompt
    from backbone import vit_coda_promtpt, vit_dualprompt, vit_l2p

    args = _args(method, settings, seed)

    def l2p_vit(args: dict, pretrained: bool = False) -> torch.nn.Module:
        model = _small_vit(
            vit_l2p, inputs, num_classes=CLASSES, prompt_length=L2P_LENGTH,
            embedding_key="cls", prompt_init="uniform", prompt_pool=True, prompt_key=True,
            pool_size=L2P_POOL, top_k=L2P_TOP_K, batchwise_prompt=args["batchwise_prompt"],
            prompt_key_init="uniform", head_type="prompt", use_prompt_mask=False,
        )  # fmt: skip
        return _load(model, inputs, ("prompt.", "head."), vit_l2p.checkpoint_filter_fn)

    def dual_vit(args: dict, pretrained: bool = False) -> torch.nn.Module:
        names = (
            "length", "embedding_key", "prompt_pool", "prompt_key", "top_k", "batchwise_prompt",
            "prompt_key_init", "head_type", "use_prompt_mask", "use_g_prompt", "g_prompt_length",
            "g_prompt_layer_idx", "use_prefix_tune_for_g_prompt", "use_e_prompt",
            "e_prompt_layer_idx", "use_prefix_tune_for_e_prompt", "same_key_value",
        )  # fmt: skip
        extra = {("prompt_length" if k == "length" else k): args[k] for k in names}
        model = _small_vit(
            vit_dualprompt, inputs, num_classes=CLASSES, prompt_init="uniform",
            pool_size=args["size"], **extra,
        )  # fmt: skip
        trainable = ("g_prompt", "e_prompt.", "head.")
        return _load(model, inputs, trainable, vit_dualprompt.checkpoint_filter_fn)

    def query_vit(self: Any, args: dict) -> torch.nn.Module:
        model = _small_vit(vit_l2p, inputs, num_classes=CLASSES)
        return _load(model, inputs, ("head.",)).eval()

    def coda_vit(args: dict, pretrained: bool = False) -> torch.nn.Module:
        return _load(_small_vit(vit_coda_promtpt, inputs, num_classes=0), inputs, ("head.",))

    inc_net.get_backbone = {"l2p": l2p_vit, "dual": dual_vit, "coda": coda_vit}[method]
    vit_coda_promtpt.torch = _CpuZeros("torch")
    inc_net.PromptVitNet.get_original_backbone = query_vit
    data_manager._get_idata = lambda name, args=None: harness_idata(inputs)()
    if fix_reshape:
        fix_e_prompt_reshape(pilot_prompt)
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    if method == "l2p":
        import models.l2p as module
    elif method == "dual":
        import models.dualprompt as module  # type: ignore[no-redef]
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
    return learner, manager, module


def run_pilot(
    pilot: Path, inputs: Path, method: str, settings: dict, seed: int, fix_reshape: bool = False
) -> dict:
    """PILOT's learner on the npz stream; accuracy over seen classes after each task."""
    learner, manager, _ = pilot_learner(pilot, inputs, method, settings, seed, fix_reshape)
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
    strategy = METHODS[method]
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
            pilot_extra = ["--pilot", str(args.pilot)] + (
                ["--fix-reshape"] if args.fix_reshape else []
            )
            reference = start(args.pilot_python, "pilot", method, seed, pilot_extra)
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
            p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=["l2p", "coda"])
            p.add_argument("--seeds", type=int, default=3)
            p.add_argument("--ablate", nargs="*", default=[], help="more cilbench --set variants")
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
        else:
            p.add_argument("--method", choices=tuple(METHODS), required=True)
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
            p.add_argument("--fix-reshape", action="store_true", help="correct LAMDA-PILOT#29")
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("epochs", "lr", "batch", "eval_batch")}
    if args.command == "pilot":
        result = run_pilot(
            args.pilot, args.inputs, args.method, settings, args.seed, args.fix_reshape
        )
        print(json.dumps(result))
    elif args.command == "cilbench":
        extra = _parse_set(args.set)
        print(json.dumps(run_cilbench(args.inputs, args.method, settings, args.seed, extra)))
    else:
        compare(args)


if __name__ == "__main__":
    main()
