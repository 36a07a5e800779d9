# Tuning sweep on the lent GPU (issue 13, issue 12): many training variants on one SfM result, each with the
# held-out PSNR every 250 steps on every held-out photo, so one call shows where each recipe peaks.
#   bash bench/gpu_tune.sh WORKSPACE NAME 'label|--set a=1 --set b=2' ...
# WORKSPACE: a workspace whose sfm stage is done. Results: $OUT/tune_NAME.json and one log per variant.
set -o pipefail
ws=$1 name=$2; shift 2
OUT=${OUT:-/tmp/spaceport_bench_out}
mkdir -p "$OUT"
for variant in "$@"; do
  label=${variant%%|*} sets=${variant#*|}
  # shellcheck disable=SC2086  # $sets is a list of --set arguments
  timeout "${TUNE_TIMEOUT:-120}" python3 bench/train_gpu.py --workspace "$ws" --runs standard --label "$label" \
    --set eval_every="${TUNE_EVAL_EVERY:-250}" --set eval_views=0 --set early_stop_patience=0 --set num_renders=0 \
    $sets --json "$OUT/tune_$name.json" > "/tmp/tune_${name}_$label.log" 2>&1
  echo "== $label ($sets): exit $?"
  grep -E "held-out PSNR|budget|appearance" "/tmp/tune_${name}_$label.log" | sed 's/^train: //' | tr '\n' ';' | \
    sed 's/held-out PSNR /@/g; s/ dB, SSIM /\//g'
  echo
done
