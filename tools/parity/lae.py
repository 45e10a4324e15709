"""LAE parity: LAMDA-PILOT's own `models/lae.py` and cilbench's `lae` on identical inputs.

Subcommands (see tools/parity/README.md); the inputs are fecam.py's with a 6-block ViT
(`fecam.py inputs OUT --depth 6`: PILOT's LAE prefixes blocks 0-4, hard-coded):

  init    --inputs DIR        seeded initial prefixes and head rows (init.pt), for --shared-init
  pilot   --pilot DIR ...     run PILOT's LAE learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's lae through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), tables and Welch t-test

Same images, class order (natural, 3 tasks of 2 classes), ViT weights and transform (ToTensor +
Normalize(0.5, 0.5), no augmentation) as fecam.py. On the PILOT side the harness replaces the
backbone factory (`utils.inc_net.get_backbone`: the small ViT built with PILOT's own
`backbone/vit_lae.VisionTransformer`, loaded from vit.pt), the dataset lookup
(`utils.data_manager._get_idata`), the loader worker count (`models.lae.num_workers = 0`), the
network's feature width (`LAE.__init__` sets `backbone.out_dim = 768`, ViT-B's, which sizes the
head; the harness reports the small ViT's `embed_dim`) and `learner.topk = 1` (top-5 of 2
classes fails in `torch.topk`; only top-1 is read). With `--shared-init` (the deterministic
regime) both sides also start from init.pt's prefix tokens and head rows instead of their own
random draws: PILOT's `pets`/`pets_emas` are overwritten after the learner is built and its
`LAE.generate_fc` fills rows from init.pt; cilbench's `Prefixes.reset_parameters` and
`TaskHeads.grow` are patched the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fecam import (
    ARCH,
    CLASSES,
    INCREMENT,
    accuracy_of,
    drive_learner,
    harness_idata,
    print_identical_table,
    print_seed_table,
    run_strategy,
    vit_arguments,
)

PET_LAYERS, PET_LENGTH = (0, 1, 2, 3, 4), 10  # PILOT's LAE.adapt_blocks and exps/lae.json


def make_init(inputs: Path, seed: int = 1) -> None:
    """init.pt for the deterministic regime: online and offline prefix keys and values
    (layers, length, D), each uniform in [-0.1, 0.1) and drawn separately (so the prefixes move the
    features and the two models differ), and head rows = the plain ViT's class means of the
    training images, centred (so accuracy is above chance)."""
    import timm
    import torch

    vit = vit_arguments(inputs)
    generator = torch.Generator().manual_seed(seed)
    shape = (len(PET_LAYERS), PET_LENGTH, vit["embed_dim"])
    init = {
        name: (torch.rand(shape, generator=generator) * 2 - 1) * 0.1
        for name in ("keys", "values", "ema_keys", "ema_values")
    }
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, **vit).eval()
    model.load_state_dict(torch.load(inputs / "vit.pt", map_location="cpu"))
    data = np.load(inputs / "images.npz")
    images = torch.tensor(data["train_x"]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        features = model((images - 0.5) / 0.5)
    labels = torch.tensor(data["train_y"])
    means = torch.stack([features[labels == c].mean(0) for c in range(CLASSES)])
    init["head"] = means - means.mean(0)  # centred: the shared component would decide alone
    torch.save(init, inputs / "init.pt")


def run_pilot(pilot: Path, inputs: Path, settings: dict, seed: int, shared: bool) -> dict:
    """PILOT's LAE learner on the npz stream; accuracy over seen classes after each task."""
    import torch

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules
    import models.lae as lae
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net
    from backbone import vit_lae

    vit = vit_arguments(inputs)

    def get_backbone(args: dict, pretrained: bool = False) -> torch.nn.Module:
        """PILOT's LAE ViT at the small size, loaded from vit.pt (timm's own parameter names)."""
        model = vit_lae.VisionTransformer(
            img_size=vit["img_size"], patch_size=vit["patch_size"], embed_dim=vit["embed_dim"],
            depth=vit["depth"], num_heads=vit["num_heads"], mlp_ratio=4, qkv_bias=True,
        )  # fmt: skip
        state = torch.load(inputs / "vit.pt", map_location="cpu")
        model.load_state_dict(state, strict=True)
        return model

    inc_net.get_backbone = get_backbone
    inc_net.LAE.feature_dim = property(lambda self: self.backbone.embed_dim)
    data_manager._get_idata = lambda name, args=None: harness_idata(inputs)()
    lae.num_workers = 0
    if shared:
        init = torch.load(inputs / "init.pt")
        generate = inc_net.LAE.generate_fc

        def generate_fc(self: Any, in_dim: int, out_dim: int) -> Any:
            fc = generate(self, in_dim, out_dim)
            fc.weight.data.copy_(init["head"][:out_dim])
            return fc

        inc_net.LAE.generate_fc = generate_fc
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": 0, "memory_per_class": 0,
        "fixed_memory": False, "shuffle": False, "init_cls": INCREMENT, "increment": INCREMENT,
        "model_name": "lae", "backbone_type": "vit_base_patch16_224_lae",
        "device": [torch.device("cpu")], "seed": seed, "tuned_epoch": settings["epochs"],
        "init_lr": settings["lr"], "batch_size": settings["batch"], "weight_decay": 0,
        "min_lr": 1e-5, "optimizer": "adam", "scheduler": "constant", "reinit_optimizer": True,
        "pretrained": True, "drop": 0.0, "drop_path": 0.0, "ema_decay": settings["ema_decay"],
        "num_freeze_epochs": settings["freeze"], "pet_cls": "Prefix", "pet_length": PET_LENGTH,
        "down_sample_dim": 5,
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = lae.Learner(args)
    learner.topk = 1
    if shared:
        with torch.no_grad():
            for pets, tag in ((learner._network.pets, ""), (learner._network.pets_emas, "ema_")):
                for i, prefix in enumerate(pets):
                    prefix.key.tokens.copy_(init[f"{tag}keys"][i])
                    prefix.val.tokens.copy_(init[f"{tag}values"][i])
    return {"side": "pilot", "seed": seed, "accuracy": drive_learner(learner, manager)}


def share_cilbench_init(inputs: Path) -> None:
    """Start cilbench's lae from init.pt (prefixes, and head rows by class) in this process."""
    import torch

    from cilbench.learn.heads import TaskHeads
    from cilbench.strategies.lae import LAE

    init = torch.load(inputs / "init.pt")
    setup = LAE.setup

    def setup_from_init(self: LAE, context: Any) -> None:
        setup(self, context)
        with torch.no_grad():
            for prefixes, tag in ((self.online, ""), (self.offline, "ema_")):
                prefixes.keys.copy_(init[f"{tag}keys"])
                prefixes.values.copy_(init[f"{tag}values"])

    grow = TaskHeads.grow

    def grow_from_init(self: TaskHeads, size: int, *args: Any, **kwargs: Any) -> Any:
        known = self.num_classes
        head = grow(self, size, *args, **kwargs)
        with torch.no_grad():
            head.weight.copy_(init["head"][known : known + size])
        return head

    LAE.setup = setup_from_init  # type: ignore[method-assign]
    TaskHeads.grow = grow_from_init  # type: ignore[method-assign]


def run_cilbench(inputs: Path, settings: dict, seed: int, shared: bool) -> dict:
    """cilbench's lae through cilbench.run on the same npz stream and weights."""
    if shared:
        share_cilbench_init(inputs)
    overrides = {
        "epochs": settings["epochs"], "lr": settings["lr"], "batch_size": settings["batch"],
        "num_freeze_epochs": settings["freeze"], "ema_decay": settings["ema_decay"],
        "weight_decay": 0.0, "optimizer": "adam", "schedule": "constant", "recipe": "pilot",
        "pet_length": PET_LENGTH, "pet_layers": PET_LAYERS, "augment.preset": "none",
    }  # fmt: skip
    accuracy = run_strategy(inputs, "lae", overrides, seed)
    return {"side": "cilbench", "seed": seed, "accuracy": accuracy}


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()

    def start(python: str, name: str, seed: int, lr: float, extra: list[str]) -> subprocess.Popen:
        command = [python, str(here), name, "--inputs", str(args.inputs), "--seed", str(seed)]
        command += ["--epochs", str(args.epochs), "--freeze", str(args.freeze)]
        command += ["--batch", str(args.batch), "--lr", str(lr)]
        if "--ema-decay" not in extra:
            command += ["--ema-decay", str(args.ema_decay)]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def both(seed: int, lr: float, extra: list[str]) -> tuple[list[float], list[float]]:
        """The two sides of one seed side by side (one process each)."""
        runs = start(args.pilot_python, "pilot", seed, lr, ["--pilot", str(args.pilot), *extra])
        mine = start(sys.executable, "cilbench", seed, lr, extra)
        return accuracy_of(runs), accuracy_of(mine)

    make_init(args.inputs)
    print(
        f"## shared initial online and offline prefixes and head, lr 0 (only the EMA moves), "
        f"EMA decay {args.shared_ema_decay}: deterministic"
    )
    shared = ["--shared-init", "--ema-decay", str(args.shared_ema_decay)]
    reference, ours = both(0, 0.0, shared)
    print_identical_table(reference, ours)
    if args.seeds <= 0:
        return
    print(
        f"\n## trained every task: {args.epochs} epochs (prefixes frozen for the first "
        f"{args.freeze}), Adam lr {args.lr}, batch {args.batch}, EMA decay {args.ema_decay}, "
        f"seeds 0..{args.seeds - 1} a side, each side's own random initialisation"
    )
    pairs = [both(s, args.lr, []) for s in range(args.seeds)]
    print_seed_table(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init").add_argument("--inputs", type=Path, required=True)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True, help="`fecam.py inputs --depth 6`")
        p.add_argument("--epochs", type=int, default=10)
        p.add_argument("--freeze", type=int, default=3, help="num_freeze_epochs")
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--ema-decay", type=float, default=0.9)
        p.add_argument("--seed", type=int, default=0)
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name in ("pilot", "cilbench"):
            p.add_argument("--shared-init", action="store_true", help="start from init.pt")
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=5)
            p.add_argument("--shared-ema-decay", type=float, default=0.99)
    args = parser.parse_args()
    if args.command == "init":
        make_init(args.inputs)
        return
    if args.command == "compare":
        compare(args)
        return
    settings = {"epochs": args.epochs, "freeze": args.freeze, "lr": args.lr,
                "batch": args.batch, "ema_decay": args.ema_decay}  # fmt: skip
    if args.command == "pilot":
        result = run_pilot(args.pilot, args.inputs, settings, args.seed, args.shared_init)
    else:
        result = run_cilbench(args.inputs, settings, args.seed, args.shared_init)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
