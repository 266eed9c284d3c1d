#!/usr/bin/env bash
# Every CUDA path of the project on one GPU, then the paper's Table 8 speed comparison.
#
#   bash tools/gpu_check.sh [OUT_DIR]        (from the project root, on a CUDA machine)
#
# Steps (each with its own time limit; about 8 minutes in all on one H200):
#   gpu_tests   pytest -m cuda (fusion checks under TF32 / fp16, deploy, benchmark, infer on CUDA)
#   train_amp   tools/train.py --amp on synthetic Cityscapes (40 iterations)
#   test_fuse   tools/test.py --fuse on that checkpoint (fused-vs-unfused check, then mIoU)
#   deploy      tools/deploy.py --device cuda (verified on the GPU, files written after checks)
#   pretrain    tools/pretrain_imagenet.py --amp --device cuda (4 epochs, 10-class 32x32 folder,
#               ends with the fused-vs-unfused check)
#   pretrain_qa the same with --model QARepVGG-A0 (the quantization-friendly block)
#   bench_fp16  Table 8 models, batch 16, 713x713, fp16 channels-last, eager and CUDA graph
#   bench_compile  deployed models under torch.compile (with and without CUDA graph)
#   profile     the kernels of PSPNet-R50-D8, trained vs conv+BN folded (fp16 channels-last)
#   bench_fp32  the same models in fp32 with TF32 off (the paper's precision)
# Logs go to OUT_DIR/<step>.log, benchmark tables also to OUT_DIR/<step>.json, and one line
# per step (exit status, seconds) to OUT_DIR/summary.txt. BENCH=0 stops after the
# correctness steps (about 2 minutes). The exit status is non-zero if a
# correctness step failed. PYTHON overrides the interpreter (default python3); CONFIGS the
# folder of the benchmarked configs (default configs).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-work_dirs/gpu_check}}
py=${PYTHON:-python3}
configs=${CONFIGS:-configs}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

step() {  # step NAME SECONDS COMMAND...: run, log, record
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  printf '%-15s rc=%-3s %4ss\n' "$name" "$rc" "$(($(date +%s) - start))" | tee -a "$out/summary.txt"
  return "$rc"
}
check() { step "$@" || failed=1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/machine.txt"
$py -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
    torch.backends.cudnn.version())' | tee -a "$out/machine.txt"

check gpu_tests 120 $py -m pytest -q -p no:cacheprovider -m cuda tests

data=$work/synthetic_cityscapes
$py tools/make_synthetic_cityscapes.py "$data" --num-train 16 --num-val 4 >/dev/null
roots="train_dataloader.dataset.data_root=$data/ val_dataloader.dataset.data_root=$data/"
roots="$roots test_dataloader.dataset.data_root=$data/"
cfg=configs/pspnet_repvgg_a0_synthetic.py
# shellcheck disable=SC2086
check train_amp 75 $py tools/train.py $cfg --amp --work-dir "$work/train" --cfg-options $roots \
  train_cfg.max_iters=40 train_cfg.val_interval=40 default_hooks.checkpoint.interval=40 \
  train_dataloader.num_workers=2
# shellcheck disable=SC2086
check test_fuse 45 $py tools/test.py $cfg "$work/train/iter_40.pth" --fuse \
  --work-dir "$work/test" --cfg-options $roots
cat >"$work/data_cfg.py" <<EOF
_base_ = "$PWD/$cfg"
data_root = "$data/"
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
EOF
check deploy 45 $py tools/deploy.py "$work/data_cfg.py" "$work/train/iter_40.pth" \
  "$work/deploy" --device cuda

$py - "$work/folder" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

rng = np.random.default_rng(0)
for split, count in (("train", 24), ("val", 36)):
    for label in range(10):
        folder = Path(sys.argv[1], split, f"class{label}")
        folder.mkdir(parents=True)
        colour = rng.uniform(0, 255, 3)
        for i in range(count):
            pixels = colour * rng.uniform(0.6, 1.2) + rng.normal(0, 30, (32, 32, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
EOF
check pretrain 60 $py tools/pretrain_imagenet.py --data-path "$work/folder" --model A0 \
  --epochs 4 -b 32 -j 2 --amp --device cuda --train-crop-size 32 --val-resize-size 32 \
  --val-crop-size 32 --output-dir "$work/pretrain"
check pretrain_qa 60 $py tools/pretrain_imagenet.py --data-path "$work/folder" \
  --model QARepVGG-A0 --epochs 4 -b 32 -j 2 --amp --device cuda --train-crop-size 32 \
  --val-resize-size 32 --val-crop-size 32 --output-dir "$work/pretrain_qa"
[[ ${BENCH:-1} == 0 ]] && exit "$failed"

models="$configs/pspnet_r50.py $configs/pspnet_repvgg_b1g2_fast.py"
models="$models $configs/pspnet_r101.py $configs/pspnet_repvgg_b2_fast.py"
# shellcheck disable=SC2086
step bench_fp16 100 $py tools/benchmark.py $models --device cuda --fp16 --channels-last \
  --variants train,deploy --treatments eager,graph --warmup 2 --rounds 5 \
  --json "$out/bench_fp16.json"
# shellcheck disable=SC2086
step bench_compile 150 $py tools/benchmark.py $models --device cuda --fp16 --channels-last \
  --variants deploy --treatments compile,compile+graph --warmup 2 --rounds 5 \
  --json "$out/bench_compile.json"
step profile 40 $py tools/profile_kernels.py "$configs/pspnet_r50.py" --device cuda --fp16 \
  --channels-last --top 12
# shellcheck disable=SC2086
step bench_fp32 150 $py tools/benchmark.py $models --device cuda --tf32 off \
  --variants train,deploy --warmup 1 --rounds 3 --json "$out/bench_fp32.json"
exit "$failed"
