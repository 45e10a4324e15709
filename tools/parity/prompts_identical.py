"""Deterministic prompt parity: LAMDA-PILOT's L2P, DualPrompt and CODA-Prompt and cilbench's, from
identical initial tensors on identical batches, compared step by step.

  pilot    --pilot DIR --method l2p|dual|coda --dump FILE   PILOT's run (timm 0.6.x venv); saves
           its initial and trained tensors per task, every step's loss, its test logits
  cilbench --method ... --dump FILE                          cilbench's run with PILOT's initial
           tensors copied in; prints the comparison (markdown)
  compare  --pilot DIR --methods ... --out DIR               both, one after the other
  votes    DUMP ...                                          PILOT's accuracy on its own test
           batches and on cilbench's, per dump (the vote grouping alone, one model each)

What is made equal, at run time, on both sides (nothing else is changed):
- the data order: both training loaders draw their order from `FixedOrder` (a numpy permutation
  per task and epoch) instead of their own shuffling (PILOT: the learner module's `DataLoader`
  with `shuffle=True`; cilbench: `training.shuffled_sampler`); images, labels and transforms are
  `prompts.py`'s;
- the initial tensors: PILOT's are saved at the start of each task's `_train` (after CODA's
  Gram-Schmidt of the new components) and copied into cilbench's prompter and head rows at the
  start of the same task's `fit` (after cilbench's own initialisation, which they replace):
  L2P / DualPrompt: prompts, keys (and the G-prompt) at task 0, the new head rows every task;
  CODA-Prompt: the new components, keys and attention vectors and head rows every task. Nothing
  trained is copied: later tasks start from each side's own training;
- the test batches: besides PILOT's own test loader (every seen class in label order, batches
  of the training batch size, so they straddle tasks), PILOT's trained model is also evaluated
  on cilbench's batches (each task's test images, batches of `--eval-batch`), so the vote
  grouping is measured on its own, on one trained model.

CODA-Prompt's Gram-Schmidt is checked separately: PILOT's torch RNG state before each
`process_task_count` and its rows before and after are saved, and cilbench's
`sequential_orthonormal_rows` is run from that state in PILOT's order (per layer: keys, attention
vectors, components) on PILOT's rows.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fecam import CLASSES, INCREMENT
from prompts import METHODS, cilbench_overrides, pilot_learner

ORDER_SEED = 18


class FixedOrder:
    """The harness's training order: a fresh permutation each epoch, from (ORDER_SEED, task,
    epoch); the n-th sampler made in a process serves task n."""

    made = 0

    def __init__(self, size: int):
        self.size, self.task, self.epoch = size, FixedOrder.made, 0
        FixedOrder.made += 1

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Any:
        rng = np.random.default_rng([ORDER_SEED, self.task, self.epoch])
        self.epoch += 1
        return iter(rng.permutation(self.size).tolist())


def record_losses(log: list) -> None:
    """Append (task, loss) for every `backward()` of this process (`log` holds the task last
    set in `CURRENT`)."""
    import torch

    backward = torch.Tensor.backward

    def recorded(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        log.append((CURRENT["task"], float(self.detach())))
        return backward(self, *args, **kwargs)

    torch.Tensor.backward = recorded  # type: ignore[method-assign]


CURRENT = {"task": -1}


def pilot_state(learner: Any, method: str) -> dict:
    """PILOT's trainable tensors in cilbench's layouts (see `cilbench.learn.prompts`)."""
    network = learner._network
    if method == "coda":
        prompt, layers = network.prompt, network.prompt.e_layers
        head = network.fc
        state = {
            "components": [getattr(prompt, f"e_p_{n}") for n in layers],
            "keys": [getattr(prompt, f"e_k_{n}") for n in layers],
            "attention": [getattr(prompt, f"e_a_{n}") for n in layers],
        }
        state = {k: __import__("torch").stack(v) for k, v in state.items()}
    elif method == "l2p":
        vit = network.backbone
        head = vit.head
        state = {"pool.prompts": vit.prompt.prompt[None, None], "pool.keys": vit.prompt.prompt_key}
    else:
        vit = network.backbone
        head = vit.head
        state = {
            "pool.prompts": vit.e_prompt.prompt.flatten(-2),  # layers, 2, pool, length, D
            "pool.keys": vit.e_prompt.prompt_key,
            "general.prompts": vit.g_prompt.flatten(-2)[:, :, None],  # layers, 2, 1, length, D
        }
    state |= {"head.weight": head.weight, "head.bias": head.bias}
    return {k: v.detach().clone() for k, v in state.items()}


def pilot_logits(learner: Any, batches: list[list[int]], dataset: Any) -> Any:
    """PILOT's network's logits over the seen classes on `dataset` in the given batches."""
    import torch

    network, out = learner._network, []
    network.eval()
    for batch in batches:
        images = torch.stack([dataset[i][1] for i in batch])
        with torch.no_grad():
            if hasattr(learner, "data_weighting"):  # CODA's network returns the logits
                logits = network(images)
            else:
                logits = network(images, task_id=learner._cur_task)["logits"]
        out.append(logits[:, : learner._total_classes])
    return torch.cat(out)


def task_batches(labels: np.ndarray, tasks: int, size: int) -> list[list[int]]:
    """cilbench's evaluation batches: each task's test images in order, `size` at a time."""
    batches = []
    for t in range(tasks):
        where = np.flatnonzero((labels >= t * INCREMENT) & (labels < (t + 1) * INCREMENT))
        batches += [where[i : i + size].tolist() for i in range(0, len(where), size)]
    return batches


def run_pilot(args: argparse.Namespace) -> None:
    import torch

    settings = {k: getattr(args, k) for k in ("epochs", "lr", "batch", "eval_batch")}
    learner, manager, module = pilot_learner(
        args.pilot, args.inputs, args.method, settings, args.seed, args.fix_reshape
    )
    loader = module.DataLoader

    def fixed_loader(dataset: Any, *a: Any, shuffle: bool = False, **kw: Any) -> Any:
        return loader(dataset, *a, sampler=FixedOrder(len(dataset)) if shuffle else None, **kw)

    module.DataLoader = fixed_loader
    losses: list = []
    record_losses(losses)
    dump: dict[str, Any] = {"start": [], "end": [], "own": [], "cilbench_batches": [], "gs": []}
    train = learner._train

    def snapshot_then_train(*a: Any) -> None:
        dump["start"].append(pilot_state(learner, args.method))
        train(*a)

    learner._train = snapshot_then_train
    if args.method == "coda":
        prompt = learner._network.prompt
        process = prompt.process_task_count

        def recorded_process() -> None:
            before = pilot_state(learner, "coda")
            rng = torch.get_rng_state()
            process()
            dump["gs"].append({"rng": rng, "before": before, "after": pilot_state(learner, "coda")})

        prompt.process_task_count = recorded_process
    for t in range(manager.nb_tasks):
        CURRENT["task"] = t
        learner.incremental_train(manager)
        dump["end"].append(pilot_state(learner, args.method))
        test = learner.test_loader.dataset
        own = [list(range(i, min(i + learner.batch_size, len(test))))
               for i in range(0, len(test), learner.batch_size)]  # fmt: skip
        labels = np.asarray(test.labels)
        ours = task_batches(labels, t + 1, args.eval_batch)
        dump["own"].append(pilot_logits(learner, own, test))
        ordered = [i for b in ours for i in b]
        dump["cilbench_batches"].append(pilot_logits(learner, ours, test))
        dump.setdefault("labels", []).append(torch.as_tensor(labels[ordered]))
        dump.setdefault("own_labels", []).append(torch.as_tensor(labels))
        learner.after_task()
    dump["losses"] = losses
    torch.save(dump, args.dump)


def _max_diff(a: Any, b: Any) -> float:
    """Max abs difference (PILOT's head also holds unseen classes' rows: the seen ones only)."""
    a = a[: len(b)] if a.shape[1:] == b.shape[1:] else a
    return float((a.float() - b.float()).abs().max())


def run_cilbench(args: argparse.Namespace) -> None:
    import torch

    import cilbench.learn.prompt_learner as prompt_learner
    import cilbench.learn.training as training
    from cilbench.learn.prompt_components import sequential_orthonormal_rows

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fecam import run_strategy

    dump = torch.load(args.dump, weights_only=False)
    training.shuffled_sampler = lambda data, generator: FixedOrder(len(data))  # type: ignore[assignment]
    losses: list = []
    record_losses(losses)
    ends: list[dict] = []
    logits: dict[int, list] = {}
    fit, learner_class = prompt_learner.fit, prompt_learner.PromptLearner
    train_experience, predict = learner_class.train_experience, learner_class.predict_with_features

    def inject(strategy: Any, t: int) -> None:
        """PILOT's initial tensors of task t into cilbench's prompter and new head rows."""
        start, prompter = dump["start"][t], strategy.prompter
        own = dict(prompter.named_parameters())
        with torch.no_grad():
            if args.method == "coda":
                new = prompter.owned(t)
                for name in ("components", "keys", "attention"):
                    own[name][:, new] = start[name][:, new]
            elif t == 0:
                for name, value in start.items():
                    if not name.startswith("head."):
                        own[name].copy_(value)
            head, low = strategy.heads.heads[t], t * INCREMENT
            head.weight.copy_(start["head.weight"][low : low + INCREMENT])
            head.bias.copy_(start["head.bias"][low : low + INCREMENT])

    def state_of(strategy: Any) -> dict:
        own = {k: v.detach().clone() for k, v in strategy.prompter.named_parameters()}
        own["head.weight"] = torch.cat([h.weight.detach() for h in strategy.heads.heads])
        own["head.bias"] = torch.cat([h.bias.detach() for h in strategy.heads.heads])
        return own

    def traced_experience(self: Any, experience: Any) -> None:
        t = CURRENT["task"] = experience.index

        def fitted(*a: Any, **kw: Any) -> Any:
            if not args.own_init:
                inject(self, t)
            dump.setdefault("cil_start", []).append(state_of(self))
            out = fit(*a, **kw)
            ends.append(state_of(self))
            return out

        prompt_learner.fit = fitted  # type: ignore[assignment]
        try:
            train_experience(self, experience)
        finally:
            prompt_learner.fit = fit

    def recorded_predict(self: Any, images: Any, features: Any) -> Any:
        scores = predict(self, images, features)
        logits.setdefault(CURRENT["task"], []).append(scores.detach().clone())
        return scores

    learner_class.train_experience = traced_experience  # type: ignore[method-assign]
    learner_class.predict_with_features = recorded_predict  # type: ignore[method-assign]
    settings = {k: getattr(args, k) for k in ("epochs", "lr", "batch", "eval_batch")}
    overrides = cilbench_overrides(args.method, settings, {})
    accuracy = run_strategy(
        args.inputs, METHODS[args.method], overrides, args.seed, args.eval_batch
    )
    report(args, dump, losses, ends, logits, accuracy)
    if args.method == "coda":
        check_gram_schmidt(dump, sequential_orthonormal_rows)


def report(args: Any, dump: dict, losses: list, ends: list, logits: dict, accuracy: list) -> None:
    """Markdown: per task, losses, trained tensors, test logits and accuracies side by side."""
    import torch

    print(f"\n### {args.method}: {args.epochs} epochs, lr {args.lr}, batch {args.batch}, "
          f"seed {args.seed}{' (PILOT reshape fixed)' if args.fix_reshape else ''}"
          f"{' (each side its own init)' if args.own_init else ''}\n")  # fmt: skip
    print(
        "| task | steps | max abs loss diff (step) | first step > 1e-4 | trained tensors "
        "max abs diff | logits max abs diff | same predictions | PILOT acc (own batches) "
        "| PILOT acc (cilbench batches) | cilbench acc |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for t in range(len(dump["end"])):
        a = np.array([v for k, v in dump["losses"] if k == t])
        b = np.array([v for k, v in losses if k == t])
        n = min(len(a), len(b))
        diff = np.abs(a[:n] - b[:n])
        worst = int(diff.argmax()) if n else -1
        over = np.flatnonzero(diff > 1e-4)
        first = str(int(over[0])) if len(over) else "none"
        names = [k for k in dump["end"][t] if k in ends[t]]
        tensors = ", ".join(f"{k} {_max_diff(dump['end'][t][k], ends[t][k]):.1e}" for k in names)
        pilot_logits = dump["cilbench_batches"][t]
        mine = torch.cat(logits.get(t, [torch.zeros(0)]))
        if mine.shape == pilot_logits.shape:
            gap = f"{_max_diff(pilot_logits, mine):.1e}"
            same = f"{int((pilot_logits.argmax(1) == mine.argmax(1)).sum())}/{len(mine)}"
        else:
            gap = same = f"shapes {tuple(mine.shape)} vs {tuple(pilot_logits.shape)}"
        labels = dump["labels"][t]
        own_acc = float((dump["own"][t].argmax(1) == dump["own_labels"][t]).float().mean() * 100)
        batch_acc = float((pilot_logits.argmax(1) == labels).float().mean() * 100)
        print(f"| {t} | {len(a)} / {len(b)} | {diff.max() if n else float('nan'):.1e} ({worst}) "
              f"| {first} | {tensors} | {gap} | {same} | {own_acc:.2f} | {batch_acc:.2f} "
              f"| {accuracy[t]:.2f} |")  # fmt: skip
    start_gap = ", ".join(
        f"{k} {_max_diff(dump['start'][0][k], dump['cil_start'][0][k]):.1e}"
        for k in dump["start"][0] if k in dump["cil_start"][0]
    )  # fmt: skip
    print(f"\ntask 0 initial tensors, PILOT vs cilbench as trained from: {start_gap}")
    print("losses PILOT (first 6):", np.round([v for _, v in dump["losses"][:6]], 6).tolist())
    print("losses cilbench (first 6):", np.round([v for _, v in losses[:6]], 6).tolist())


def check_gram_schmidt(dump: dict, sequential: Any) -> None:
    """cilbench's `sequential_orthonormal_rows` from PILOT's RNG state on PILOT's rows, in
    PILOT's order (per layer: keys, attention, components), against PILOT's new rows."""
    import torch

    worst = 0.0
    for t, record in enumerate(dump["gs"], start=1):
        generator = torch.Generator().manual_seed(0)
        generator.set_state(record["rng"])
        for n in range(record["before"]["keys"].shape[0]):
            for name in ("keys", "attention", "components"):
                old = record["before"][name][n].flatten(1)
                size = old.shape[0] // (CLASSES // INCREMENT)
                new = sequential(old[: t * size], size, generator)
                pilot = record["after"][name][n].flatten(1)[t * size : (t + 1) * size]
                worst = max(worst, _max_diff(new, pilot))
    print(f"\nGram-Schmidt, cilbench `sequential` vs PILOT from the same RNG state and rows: "
          f"max abs diff {worst:.1e} over {len(dump['gs'])} task starts")  # fmt: skip


def votes(args: argparse.Namespace) -> None:
    """Per dump (one PILOT run each): accuracy (%) after each task on PILOT's own test batches
    and on cilbench's, from the same trained model; then the mean difference per task."""
    import torch

    rows = []
    print("| dump | PILOT's batches | cilbench's batches |\n|---|---|---|")
    for path in args.dumps:
        dump = torch.load(path, weights_only=False)
        own = [float((o.argmax(1) == y).float().mean() * 100)
               for o, y in zip(dump["own"], dump["own_labels"])]  # fmt: skip
        ours = [float((o.argmax(1) == y).float().mean() * 100)
                for o, y in zip(dump["cilbench_batches"], dump["labels"])]  # fmt: skip
        rows.append((own, ours))
        print(f"| {Path(path).name} | {np.round(own, 2).tolist()} | {np.round(ours, 2).tolist()} |")
    gap = np.array([np.subtract(a, b) for a, b in rows])
    print(
        f"\nmean (own - cilbench batches) per task: {gap.mean(0).round(2).tolist()}; "
        f"runs with any difference: {int((gap != 0).any(1).sum())} of {len(rows)}"
    )


def compare(args: argparse.Namespace) -> None:
    here = str(Path(__file__).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        dump = args.out / f"{method}-{args.seed}{'-fixed' if args.fix_reshape else ''}.pt"
        common = ["--inputs", str(args.inputs), "--method", method, "--dump", str(dump)]
        for k in ("epochs", "lr", "batch", "eval_batch", "seed"):
            common += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        pilot = ["--pilot", str(args.pilot)] + (["--fix-reshape"] if args.fix_reshape else [])
        subprocess.run(
            [args.pilot_python, here, "pilot", *common, *pilot],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        extra = (["--fix-reshape"] if args.fix_reshape else []) + (
            ["--own-init"] if args.own_init else []
        )
        subprocess.run([sys.executable, here, "cilbench", *common, *extra], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("votes").add_argument("dumps", nargs="+", type=Path)
    for name in ("pilot", "cilbench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--inputs", type=Path, required=True)
        p.add_argument("--epochs", type=int, default=3)
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--eval-batch", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--fix-reshape", action="store_true", help="correct LAMDA-PILOT#29")
        if name == "compare":
            p.add_argument("--pilot", type=Path, required=True)
            p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=["coda"])
            p.add_argument("--out", type=Path, required=True, help="folder for the dumps")
            p.add_argument("--pilot-python", default="/tmp/pilot-venv/bin/python")
            p.add_argument("--own-init", action="store_true", help="no copying (control)")
        else:
            p.add_argument("--method", choices=tuple(METHODS), required=True)
            p.add_argument("--dump", type=Path, required=True)
        if name == "pilot":
            p.add_argument("--pilot", type=Path, required=True)
        if name == "cilbench":
            p.add_argument("--own-init", action="store_true", help="no copying (control)")
    args = parser.parse_args()
    commands = {"pilot": run_pilot, "cilbench": run_cilbench, "compare": compare, "votes": votes}
    commands[args.command](args)


if __name__ == "__main__":
    main()
