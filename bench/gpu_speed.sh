#!/usr/bin/env bash
# The VAE cache and the training step on one GPU, each against the real job's current way in the same run:
#   1. self-attention alone through SDPA's own kernel choice, cuDNN's and PyTorch's flash kernel, at the
#      93- and 73-frame token counts (bench_train_gpu.py --attention-kernels)
#   2. the training step of 4 full-width blocks, selective checkpointing + compile, bf16: 93 frames with
#      SDPA's own choice first (the baseline), then cuDNN attention at 93 and 73 frames, and SDPA's own
#      choice at 73 (bench_train_gpu.py --case); the first case's kernels profiled
#   3. the VAE cache: the real job's encoder settings first, then the others, parity, the shard job,
#      73 frames, the decode alone, torch.compile last (bench_vae_gpu.py --speed)
#
#     bash bench/gpu_speed.sh [OUT_DIR]      (OUT_DIR defaults to $OUT, else ./gpu-speed-out)
#     bash bench/gpu_speed.sh --smoke DIR    the same steps on the CPU at tiny sizes, torch.compile left
#                                            out, in the current environment (nothing installed)
#
# Needs, beside the repository, .whl/ (git-ignored, carried along; `bash bench/gpu_wheels/prepare.sh speed`
# builds it): diffusers and what the benches import besides that the GPU image lacks, and ffmpeg.xz. Stops
# by itself within SPEED_BUDGET_S seconds (440 by default), each part under a `timeout` that ends inside
# it. Writes gpu-speed.log (all output), results.jsonl (every JSON line), train-profile.txt and
# vae-profile.txt (the baselines' kernels by GPU time) to OUT_DIR, and ends with a summary.

set -uo pipefail
export PYTHONUNBUFFERED=1

REPO=$(cd "$(dirname "$0")/.." && pwd)
SMOKE=false
if [ "${1:-}" = --smoke ]; then
    SMOKE=true
    shift
fi
OUT_DIR=${1:-${OUT:-$REPO/gpu-speed-out}}
SITE=/tmp/site
BUDGET_S=${SPEED_BUDGET_S:-440}
PARTS=${SPEED_PARTS:-attention,train,vae}  # e.g. SPEED_PARTS=vae to measure the VAE alone
# SPEED_VAE_ARGS: more arguments of bench_vae_gpu.py --speed, e.g. --compile-only
mkdir -p "$OUT_DIR"
# shellcheck source=gpu_wheels/install.sh
. "$REPO/bench/gpu_wheels/install.sh"

start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
stamp() { echo "== [$(elapsed) s] $*"; }

# part NAME CAP_S COMMAND...: the command under a timeout of CAP_S, or of what is left of the budget.
part() {
    local name=$1 cap=$2 left
    shift 2
    left=$((BUDGET_S - $(elapsed) - 5))
    ((left < cap)) && cap=$left
    if ((cap < 30)); then
        stamp "$name: skipped, $left s of the budget left"
        return
    fi
    stamp "$name (at most $cap s)"
    timeout --kill-after=5 "$cap" "$@"
    stamp "$name: exit status $?"
}

measure() {
    local train=(--gpu --compile) vae=(--gpu)
    if $SMOKE; then
        train=(--cpu --warmup 1 --steps 1)
        vae=(--no-compile)
    else
        stamp "install the carried wheels and ffmpeg into $SITE"
        install_carried "$REPO" "$SITE" || { echo "installing the carried wheels failed"; return 1; }
        export PATH="$SITE/bin:$PATH"
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
    fi
    export PYTHONPATH="$REPO:$REPO/bench:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    python3 -c 'import torch, diffusers; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(),
          "diffusers", diffusers.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
    ffmpeg -hide_banner -version | head -n 1
    echo "cpus: $(nproc)"

    cd "$REPO" || return 1
    if [[ $PARTS == *attention* ]]; then
        part "attention kernels" 60 python3 bench/bench_train_gpu.py "${train[0]}" --attention-kernels
    fi
    if [[ $PARTS == *train* ]]; then
        part "training step" 200 python3 bench/bench_train_gpu.py "${train[@]}" --ac selective --time-limit 130 \
            --case 24:sdpa --case 24:sdpa_cudnn --case 19:sdpa_cudnn --case 19:sdpa \
            --profile "$OUT_DIR/train-profile.txt"
    fi
    if [[ $PARTS == *vae* ]]; then
        # The VAE starts no new step in its last 60 s (the compile step, last, may still be cut short).
        local vae_cap=$((BUDGET_S - $(elapsed) - 5))
        part "VAE cache" "$vae_cap" python3 bench/bench_vae_gpu.py "${vae[@]}" --speed ${SPEED_VAE_ARGS:-} \
            --time-limit $((vae_cap - 60)) \
            --profile "$OUT_DIR/vae-profile.txt"
    fi
}

measure 2>&1 | tee "$OUT_DIR/gpu-speed.log"

summarize() {
    stamp "summary"
    grep -h '^{' "$OUT_DIR/gpu-speed.log" >"$OUT_DIR/results.jsonl"
    python3 - "$OUT_DIR/results.jsonl" <<'EOF'
import json, sys

lines = [json.loads(line) for line in open(sys.argv[1])]
for line in lines:
    if line["bench"].startswith("attention_kernel"):
        print(f"attention {line['tokens']:>6} tokens {line['backend']:<11}", line.get("error") or
              f"{line['ms_fwd_bwd']:8.1f} ms fwd+bwd {line['tflops']:6.1f} TFLOP/s (SDPA alone picks "
              f"{line['sdpa_default_kernel']})")
for line in lines:
    if line["bench"].startswith("train_gpu"):
        case = f"train {line['latent_frames']} latent frames {line['attention']}"
        print(f"{case:<38}", line.get("error") or line.get("skipped") or
              f"{line['step_seconds']:.3f} s/step, MFU {line.get('mfu', 0):.1%}, {line['speed_vs_first_case']:.3f}x "
              f"the first case, 48 blocks on 8 GPUs {line.get('extrapolated_48_block_step_seconds_8gpu')} s")
summaries = [line for line in lines if line["bench"] == "vae_speed_summary"]
for line in lines:
    if line["bench"] == "vae_speed" and ("error" in line or "skipped" in line):
        print("VAE", line["step"], line.get("frames"), line.get("error") or line.get("skipped"))
if summaries:
    print("VAE:", json.dumps(summaries[-1], indent=1))
EOF
    stamp "done"
}

summarize 2>&1 | tee -a "$OUT_DIR/gpu-speed.log"
