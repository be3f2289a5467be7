#!/usr/bin/env bash
# A third model family end to end on 2 CPU cores, every step a `metavote` command:
#   1. a MobileNetV2 (Hugging Face config, depthwise convolutions, BatchNorm) pre-trained on
#      CIFAR-100 with `metavote pretrain --hf-config` (written as a save_pretrained folder);
#   2. a 30-task IFP zoo on it (the CPU profile: r = 0.8, IFP at 200 iterations);
#   3. the main table on 10 test tasks: MVP, the nearest record, IFP at J and 10 J, random.
# Logs go to benchmarks/any-model/results/third_family/; the weights and the zoo stay in runs/ (not committed).
#   bash benchmarks/any-model/third_family.sh        # EPOCHS=10 by default (about 30 min); nothing else running
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/any-model/results/third_family
BIN=.venv/bin
MODEL=runs/hf-mobilenet_v2-cifar100
mkdir -p "$OUT" runs
if [ ! -d "$MODEL" ]; then
  /usr/bin/time -f "pretrain wall %e s" $BIN/metavote pretrain --hf-config benchmarks/any-model/configs/mobilenet_v2_cifar.json \
      --epochs "${EPOCHS:-10}" --out "$MODEL" --threads 2 --quiet 2>&1 | tee "$OUT/pretrain.log"
fi
/usr/bin/time -f "zoo build wall %e s" $BIN/metavote zoo build --zoo runs/zoo-mnv2 --backbone "$MODEL" --profile cpu --tasks 30 \
    --seed 0 --workers 2 --threads 1 --quiet 2>&1 | tee "$OUT/zoo.log"
/usr/bin/time -f "bench wall %e s" $BIN/metavote bench --zoo runs/zoo-mnv2 --backbone "$MODEL" --profile cpu --tasks 10 \
    --also nearest --no-baselines --out runs/bench-mnv2 --threads 2 --quiet 2>&1 | tee "$OUT/bench.log"
cp runs/bench-mnv2/summary.md runs/bench-mnv2/rows.jsonl "$OUT/"
