#!/usr/bin/env bash
# The demo chain end to end on one CUDA GPU (config/demo-cuda.yaml), on a bare machine that has
# PyTorch but no Snakemake, diffusers, PyAV, ffmpeg-python, ftfy or ffmpeg binary and no network.
#
#     bash bench/gpu_check.sh [OUT_DIR]      (OUT_DIR defaults to $OUT, else ./gpu-check-out)
#
# Needs, beside the repository, the folder .whl/ (git-ignored, carried along; bench/gpu_wheels/prepare.sh
# builds it): the missing Python packages as wheels and ffmpeg.xz, a static ffmpeg (libx264, H.264
# decoder, lavfi sources). Writes
# gpu-check.tar.gz (Snakemake's log, every rule log, the training log, TensorBoard events, validation
# videos and samples) to OUT_DIR and ends with a short summary; tee the output for a console log.

set -uo pipefail
export PYTHONUNBUFFERED=1

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${1:-${OUT:-$REPO/gpu-check-out}}
SITE=/tmp/site
WORK=/tmp/demo-cuda
SNAKEMAKE_TIMEOUT_S=${SNAKEMAKE_TIMEOUT_S:-420}
mkdir -p "$OUT_DIR"

start=$(date +%s)
stamp() { echo "== [$(($(date +%s) - start)) s] $*"; }

stamp "install the carried wheels into $SITE"
# shellcheck source=gpu_wheels/install.sh
. "$REPO/bench/gpu_wheels/install.sh"
install_carried "$REPO" "$SITE" || { echo "installing the carried wheels failed"; exit 1; }
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"

stamp "environment"
nvidia-smi || echo "nvidia-smi failed"
command -v python python3 ffmpeg
ffmpeg -hide_banner -version | head -n 1
python3 - <<'EOF'
import importlib
import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("transformers", "diffusers", "accelerate", "av", "snakemake", "safetensors", "tokenizers"):
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", "?"))
EOF
echo "-- pip check (conflicts with the preinstalled packages, if any):"
python3 -m pip check 2>&1 | head -n 20 || true

stamp "demo chain: snakemake all --configfile config/demo-cuda.yaml in $WORK"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$REPO"
timeout "$SNAKEMAKE_TIMEOUT_S" python3 -m snakemake all --configfile config/demo-cuda.yaml \
    --cores 16 --resources gpu=1 --directory "$WORK"
status=$?
stamp "snakemake exited with status $status"

cd "$WORK"
run_dir=runs/$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["train"]["run"])' \
    "$REPO/config/demo-cuda.yaml")
tar -czf "$OUT_DIR/gpu-check.tar.gz" --ignore-failed-read \
    .snakemake/log results/logs results/metadata.parquet results/rejected.parquet \
    "$run_dir/logs" "$run_dir/tb" "$run_dir/train_config.yaml" "$run_dir/samples" "$run_dir/validation" \
    2>/dev/null
ls -l "$OUT_DIR"

stamp "summary"
snakemake_log=$(ls -t .snakemake/log/*.snakemake.log 2>/dev/null | head -n 1)
echo "-- rules run (from ${snakemake_log:-no Snakemake log}):"
[ -n "$snakemake_log" ] && grep -E '^(local)?(rule|checkpoint) [A-Za-z_]+:' "$snakemake_log" \
    | sed -E 's/^(local)?(rule|checkpoint) //; s/:$//' | sort | uniq -c
grep -E 'steps \([0-9]+%\) done|Error|Exiting because' "$snakemake_log" 2>/dev/null | tail -n 3
echo "-- cache jobs' devices:"
grep -rhoE 'GPU slot [^ ]+ of [^ ]+|no GPU visible: running on CPU' results/logs/cache_vae results/logs/cache_text \
    2>/dev/null | sort | uniq -c
echo "-- training log, last 20 lines and the last progress bar ($run_dir/logs/train.log):"
train_lines=$(tr '\r' '\n' <"$run_dir/logs/train.log" 2>/dev/null | grep -v '^ *$')
grep -v '%|' <<<"$train_lines" | tail -n 20 | cut -c 1-400
grep '^train: .*%|' <<<"$train_lines" | tail -n 1
echo "-- samples:"
for video in "$run_dir"/samples/*.mp4; do
    [ -f "$video" ] || { echo "no sample video"; break; }
    frames=$(python3 -c 'import av, sys; print(sum(1 for _ in av.open(sys.argv[1]).decode(video=0)))' "$video" 2>&1)
    echo "$WORK/$video: $(stat -c %s "$video") bytes, $frames decoded frames"
done
stamp "done"
exit "$status"
