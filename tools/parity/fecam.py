"""FeCAM parity: LAMDA-PILOT's own `models/fecam.py` and cilbench's `fecam` on identical inputs.

Subcommands (see tools/parity/README.md):

  inputs  OUT                 seeded images (npz) and a seeded random timm ViT state dict (pt)
  pilot   --pilot DIR ...     run PILOT's FeCAM learner (in a venv with timm 0.6.x), print JSON
  cilbench ...                run cilbench's fecam through cilbench.run, print JSON
  compare --pilot DIR ...     both sides over seeds (subprocesses), table and Welch t-test

Both sides read the same image bytes (uint8 32x32 RGB), the same class order (natural), the same
ViT weights and the same transform (ToTensor + Normalize(0.5, 0.5), no augmentation). On the PILOT
side only the backbone factory (`utils.inc_net.get_backbone`, so the small ViT is built with
PILOT's own adapter ViT class and loaded from the saved weights), the dataset lookup
(`utils.data_manager._get_idata`, a harness-side iData over the npz) and the loader worker count
(`models.fecam.num_workers = 0`) are replaced; nothing is copied from the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

ARCH = "vit_tiny_patch16_224"
VIT = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 64, "num_heads": 4}
CLASSES, INCREMENT, TRAIN, TEST = 6, 2, 30, 12
MEAN = STD = (0.5, 0.5, 0.5)


def make_inputs(out: Path, seed: int = 0, depth: int = VIT["depth"]) -> None:
    """images.npz (train/test uint8 NHWC + labels) and vit.pt (timm state dict), both seeded;
    vit.json: the ViT's arguments (`depth` blocks; LAE's harness needs at least 5)."""
    import timm
    import torch

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 225, size=(CLASSES, 4, 4, 3))
    patterns = coarse.repeat(8, axis=1).repeat(8, axis=2)  # 32x32 blocky class patterns

    def sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(CLASSES), per_class)
        noise = rng.normal(0, 90.0, size=(len(labels), 32, 32, 3))
        return np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8), labels

    (train_x, train_y), (test_x, test_y) = sample(TRAIN), sample(TEST)
    np.savez(out / "images.npz", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    torch.manual_seed(seed)
    vit = {**VIT, "depth": depth}
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, **vit)
    torch.save(model.state_dict(), out / "vit.pt")
    (out / "vit.json").write_text(json.dumps(vit))


def vit_arguments(inputs: Path) -> dict[str, int]:
    """The saved ViT's timm arguments (`VIT` for inputs written before vit.json existed)."""
    path = inputs / "vit.json"
    return json.loads(path.read_text()) if path.exists() else dict(VIT)


def _accuracies(pred_per_task: list[np.ndarray], true_per_task: list[np.ndarray]) -> list[float]:
    return [float((p == t).mean() * 100) for p, t in zip(pred_per_task, true_per_task)]


def load_pilot_vit(model: Any, inputs: Path, adapter_key: str | tuple[str, ...]) -> Any:
    """vit.pt into one of PILOT's adapter ViT classes, as PILOT's loader does: fused qkv split
    into q/k/v, mlp.fc* renamed fc*; only the (missing) parameters named by `adapter_key` (one
    or several name parts: the adapters, MOS's head) stay trainable."""
    import torch

    state = torch.load(inputs / "vit.pt", map_location="cpu")
    dim = VIT["embed_dim"]
    for key in list(state):
        if "qkv." in key:
            fused = state.pop(key)
            for i, name in enumerate("qkv"):
                state[key.replace("qkv.", f"{name}_proj.")] = fused[i * dim : (i + 1) * dim]
    for key in list(state):
        if "mlp.fc" in key:
            state[key.replace("mlp.", "")] = state.pop(key)
    missing = model.load_state_dict(state, strict=False).missing_keys
    keys = (adapter_key,) if isinstance(adapter_key, str) else adapter_key
    assert all(any(key in k for key in keys) for k in missing), missing
    for name, p in model.named_parameters():
        p.requires_grad = name in missing
    model.out_dim = dim
    return model.eval()


def harness_idata(inputs: Path) -> type:
    """The iData class PILOT's DataManager reads, serving the npz stream (shared with ease.py)."""
    from torchvision import transforms

    data = np.load(inputs / "images.npz")

    class HarnessData:
        use_path = False
        train_trsf: ClassVar[list] = []
        test_trsf: ClassVar[list] = []
        common_trsf: ClassVar[list] = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        class_order: ClassVar[list] = list(range(CLASSES))

        def download_data(self) -> None:
            self.train_data, self.train_targets = data["train_x"], data["train_y"]
            self.test_data, self.test_targets = data["test_x"], data["test_y"]

    return HarnessData


def drive_learner(learner: Any, manager: Any) -> list[float]:
    """A PILOT learner through every task as PILOT's `trainer.py` drives it (`incremental_train`,
    its own `_eval_cnn` top-1, `after_task`); accuracy over the seen classes after each task.
    Runs in a temporary folder: PILOT's `save_checkpoint` and the like write into the cwd."""
    preds, trues = [], []
    with tempfile.TemporaryDirectory() as scratch:
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            for _ in range(manager.nb_tasks):
                learner.incremental_train(manager)
                y_pred, y_true = learner._eval_cnn(learner.test_loader)
                preds.append(y_pred[:, 0])
                trues.append(y_true)
                learner.after_task()
        finally:
            os.chdir(cwd)
    return _accuracies(preds, trues)


def run_pilot(pilot: Path, inputs: Path, epochs: int, lr: float, batch: int, seed: int) -> dict:
    """PILOT's FeCAM learner on the npz stream; accuracy over seen classes after each task."""
    import torch

    sys.path.insert(0, str(pilot))
    # the reference checkout's modules (and its dependency easydict)
    import models.fecam as fecam
    import utils.data_manager as data_manager
    import utils.inc_net as inc_net
    from backbone import vit_adapter
    from easydict import EasyDict

    HarnessData = harness_idata(inputs)

    def get_backbone(args: dict, pretrained: bool = False) -> torch.nn.Module:
        """PILOT's adapter ViT at the small size, loaded from vit.pt as PILOT loads timm weights."""
        config = EasyDict(
            ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
            ffn_adapter_init_option="lora", ffn_adapter_scalar="0.1", ffn_num=args["ffn_num"],
            d_model=VIT["embed_dim"], vpt_on=False, vpt_num=0,
        )  # fmt: skip
        model = vit_adapter.VisionTransformer(
            img_size=VIT["img_size"], patch_size=VIT["patch_size"], embed_dim=VIT["embed_dim"],
            depth=VIT["depth"], num_heads=VIT["num_heads"], mlp_ratio=4, qkv_bias=True,
            num_classes=0, global_pool=False, drop_path_rate=0.0, tuning_config=config,
        )  # fmt: skip
        return load_pilot_vit(model, inputs, "adaptmlp")

    inc_net.get_backbone = get_backbone
    data_manager._get_idata = lambda name, args=None: HarnessData()
    fecam.num_workers = 0
    args = {
        "prefix": "parity", "dataset": "harness", "memory_size": 0, "memory_per_class": 0,
        "fixed_memory": False, "shuffle": False, "init_cls": INCREMENT, "increment": INCREMENT,
        "model_name": "fecam", "backbone_type": "pretrained_vit_b16_224_adapter",
        "device": [torch.device("cpu")], "seed": seed, "tuned_epoch": epochs, "init_lr": lr,
        "batch_size": batch, "weight_decay": 5e-4, "min_lr": 0, "ffn_num": 16,
        "optimizer": "sgd",
    }  # fmt: skip
    torch.manual_seed(seed)  # trainer._set_random
    manager = data_manager.DataManager("harness", False, seed, INCREMENT, INCREMENT, args)
    learner = fecam.Learner(args)
    return {"side": "pilot", "seed": seed, "accuracy": drive_learner(learner, manager)}


def run_cilbench(inputs: Path, epochs: int, lr: float, batch: int, seed: int, peft: str) -> dict:
    """cilbench's fecam through cilbench.run on the same npz stream and weights."""
    overrides = {
        "peft": peft, "epochs": max(epochs, 1), "lr": lr, "batch_size": batch,
        "weight_decay": 5e-4, "min_lr": 0.0, "adapter_bottleneck": 16, "augment.preset": "none",
        # PILOT's covariance steps (the Config defaults; spelled out so no recipe changes them)
        "recipe": "pilot", "shrink1": 100.0, "shrink2": 0.0, "shrink_mode": "absolute",
        "normalise": "corrcoef", "feature_norm": "distance", "tukey_beta": 1.0,
    }  # fmt: skip
    return {
        "side": "cilbench",
        "seed": seed,
        "accuracy": run_strategy(inputs, "fecam", overrides, seed),
    }


def run_strategy(
    inputs: Path,
    strategy: str,
    overrides: dict,
    seed: int,
    eval_batch: int | None = None,
    results: list | None = None,
) -> list[float]:
    """A cilbench strategy through cilbench.run on the npz stream and weights: accuracy (%) over
    the classes seen so far after each task (`eval_batch`: the evaluation batch size, if not the
    run's default; `results`: a list the `RunResult` is appended to)."""
    from cilbench.backbones.spec import BackboneSpec
    from cilbench.data.sources import ArraySource
    from cilbench.data.streams import ClassIncrementalOptions, class_incremental_stream
    from cilbench.engine.loop import run
    from cilbench.engine.spec import RunSpec

    data = np.load(inputs / "images.npz")
    options = ClassIncrementalOptions(init_classes=0, increment=INCREMENT, class_order="natural")
    stream = class_incremental_stream(
        "parity",
        "1",
        ArraySource(data["train_x"], data["train_y"], "parity-train"),
        ArraySource(data["test_x"], data["test_y"], "parity-test"),
        [f"c{c}" for c in range(CLASSES)],
        options,
    )
    backbone = BackboneSpec(
        name="parity-vit", architecture=ARCH, weights=f"file:{inputs / 'vit.pt'}",
        model_kwargs=vit_arguments(inputs), image_size=32, crop_pct=1.0, normalization="inception",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        spec = RunSpec(
            strategy=strategy, stream=stream, backbone=backbone, seed=seed, overrides=overrides,
            out_dir=Path(scratch) / "runs", cache_dir=None, device="cpu", num_workers=0,
        )  # fmt: skip
        if eval_batch is not None:
            spec = dataclasses.replace(spec, batch_size=eval_batch)
        result = run(spec)
    if results is not None:
        results.append(result)
    matrix = np.array(result.accuracy_matrix, dtype=float)
    # equal test sets per task: accuracy over seen classes = mean of the row's seen entries
    accuracy = [float(np.mean(matrix[t, : t + 1])) for t in range(len(matrix))]
    scale = 100.0 if max(accuracy) <= 1.0 else 1.0
    return [a * scale for a in accuracy]


def accuracy_of(process: subprocess.Popen) -> list[float]:
    """The per-task accuracy a side's subprocess printed as its last JSON line."""
    out, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"{process.args[2]} failed:\n{err.decode()[-3000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])["accuracy"]


def print_identical_table(reference: list[float], ours: list[float]) -> None:
    """The deterministic regime's per-task table (the two columns must agree)."""
    print("| task | PILOT | cilbench |\n|---|---|---|")
    for t, (a, b) in enumerate(zip(reference, ours)):
        print(f"| {t} | {a:.2f} | {b:.2f} |")


def print_seed_table(pairs: list[tuple[list[float], list[float]]]) -> None:
    """A trained regime from (PILOT, cilbench) accuracy pairs, one per seed (`welch_table`)."""
    welch_table(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))


def welch_table(ref: np.ndarray, cil: np.ndarray) -> None:
    """Per task (columns of the seeds x tasks arrays): mean ± sd a side and Welch's two-sided
    t-test (unequal variances); then the per-seed rows."""
    from scipy import stats

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


def compare(args: argparse.Namespace) -> None:
    here = Path(__file__).resolve()
    pilot_args = ["--pilot", str(args.pilot)]
    common = ["--inputs", str(args.inputs), "--lr", str(args.lr), "--batch", str(args.batch)]

    def start(python: str, name: str, seed: int, epochs: int, extra: list[str]) -> subprocess.Popen:
        command = [python, str(here), name, *common, "--epochs", str(epochs), "--seed", str(seed)]
        return subprocess.Popen(command + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def both(seed: int, epochs: int, pilot_extra: list[str], ours_extra: list[str]) -> tuple:
        """Run the two sides of one seed side by side (one process each)."""
        runs = start(args.pilot_python, "pilot", seed, epochs, pilot_args + pilot_extra)
        mine = start(sys.executable, "cilbench", seed, epochs, ours_extra)
        return accuracy_of(runs), accuracy_of(mine)

    print("## frozen first session (PILOT: lr 0, 1 epoch; cilbench: peft=none)")
    reference, ours = both(0, 1, ["--lr-override", "0"], ["--peft", "none"])
    print_identical_table(reference, ours)
    if args.seeds <= 0:
        return
    print(
        f"\n## adapter trained on task 0: {args.epochs} epochs, SGD lr {args.lr}, batch "
        f"{args.batch}, seeds 0..{args.seeds - 1} a side"
    )
    pairs = [both(s, args.epochs, [], ["--peft", "adapter"]) for s in range(args.seeds)]
    print_seed_table(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inputs = sub.add_parser("inputs")
    inputs.add_argument("out", type=Path)
    inputs.add_argument("--depth", type=int, default=VIT["depth"], help="ViT blocks (LAE: 6)")
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True)
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        if name in ("pilot", "compare"):
            p.add_argument("--pilot", type=Path, required=True, help="LAMDA-PILOT checkout")
        if name == "pilot":
            p.add_argument("--lr-override", type=float, default=None, help="0: frozen adapter")
        if name == "cilbench":
            p.add_argument("--peft", default="adapter")
        if name == "compare":
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "inputs":
        make_inputs(args.out, depth=args.depth)
    elif args.command == "pilot":
        lr = args.lr if args.lr_override is None else args.lr_override
        result = run_pilot(args.pilot, args.inputs, args.epochs, lr, args.batch, args.seed)
        print(json.dumps(result))
    elif args.command == "cilbench":
        result = run_cilbench(args.inputs, args.epochs, args.lr, args.batch, args.seed, args.peft)
        print(json.dumps(result))
    else:
        compare(args)


if __name__ == "__main__":
    main()
