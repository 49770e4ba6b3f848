#!/usr/bin/env bash
# timm's own train.py beside ours on the same fold (issue 25; docs/benchmarks.md, "A peer: timm train.py").
# Fold 0 of the CIFAR-10 dev competition, tf_efficientnet_lite0 from the converted ImageNet file, 96 px, 3 epochs,
# AdamW lr 5e-4 wd 0.05, batch 64, 1 warm-up epoch then cosine, RandAugment (2 ops, magnitude 9) with flips,
# label smoothing 0.1, dropout 0.2, a weight EMA of decay 0.999 with timm's warm-up; the whole image resized (no random crop, no
# centre crop at validation). Each run alone on the machine, under /usr/bin/time -v (peak RSS of the largest process).
#   bash docs/scripts/timm_peer.sh <timm checkout: train.py and timm/>   (after make pretrained-weights)
set -euo pipefail
TIMM=${1:?give the folder holding the train.py and timm package of a timm checkout}
OUT=bench/peer
mkdir -p "$OUT"
PY=.venv/bin/python
# fold 0 as the ImageFolder tree train.py reads (links to our images)
$PY - "$OUT/imagefolder" <<'PYEOF'
import os, sys
import pandas as pd
root, out = "data/cifar10-dev", sys.argv[1]
rows = pd.read_csv(f"{root}/train.csv").merge(pd.read_csv("bench/cifar10-dev/folds/cifar10-dev.csv"), on="id")
for row in rows.itertuples():
    folder = f"{out}/{'validation' if row.fold == 0 else 'train'}/{row.label}"
    os.makedirs(folder, exist_ok=True)
    if not os.path.lexists(f"{folder}/{row.id}.jpg"):
        os.symlink(os.path.abspath(f"{root}/train/{row.id}.jpg"), f"{folder}/{row.id}.jpg")
PYEOF
/usr/bin/time -v $PY -m benchmarks.recipes --config configs/bench/cifar10_dev.yaml \
    --rows configs/bench/pretrained_cifar.yaml --only lite0_96_strong_peer --out "$OUT/ours.json" > "$OUT/ours.log" 2>&1
PYTHONPATH="$TIMM" /usr/bin/time -v $PY "$TIMM/train.py" "$OUT/imagefolder" --device cpu --no-prefetcher -j 2 \
    --model tf_efficientnet_lite0 --pretrained --pretrained-path weights/tf_efficientnet_lite0.safetensors \
    --num-classes 10 --img-size 96 --crop-pct 1.0 --scale 1.0 1.0 --ratio 1.0 1.0 --hflip 0.5 --aa rand-m9-n2 \
    --epochs 3 -b 64 --opt adamw --lr 5e-4 --weight-decay 0.05 --sched cosine --sched-on-updates \
    --warmup-epochs 1 --warmup-lr 5e-6 --min-lr 5e-6 --smoothing 0.1 --drop 0.2 \
    --model-ema --model-ema-decay 0.999 --model-ema-warmup --channels-last --checkpoint-hist 1 --log-interval 25 \
    --output "$OUT/timm" --experiment lite0 > "$OUT/timm.log" 2>&1
grep -E "Maximum resident|Elapsed" "$OUT/ours.log" "$OUT/timm.log"
