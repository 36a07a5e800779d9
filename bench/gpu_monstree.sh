# Issues 13 and 14 on the lent GPU in two calls, the second within 30 s of the first (the machine stays warm).
# Logs and JSON go to $OUT.
#   bash bench/gpu_monstree.sh train            carry .gpu/site_nogsplat.tar.xz .gpu/gsplat_kit.tar.xz .data_monstree
#                                               (or the gsplat wheel instead of the kit: it builds, ~80 s)
#       PARTS (default all: "tests e2e compress throughput side"): the GPU fast-path tests, monstree photos -> SOG
#       with `standard`, the compression variants on that splat, the 1M-Gaussian throughput row with its profile, and
#       ours side by side with the plain recipe (SIDE_RUNS, default "standard plain"; PLAIN_STEPS, default 10000).
#       The parts after e2e need its workspace: in a later call, while the machine is warm, PARTS="side" reuses it
#   bash bench/gpu_monstree.sh splat-transform  carry .gpu/nodekit.tar.xz .gpu/gl
#       ours (as the job ran: the preset's compress settings) and splat-transform 3.7.0 on WebGPU on the same splat.
#       It unpacks GL libraries into / and re-runs ldconfig for the WebGPU path: keep it after the timed runs
set -o pipefail
OUT=${OUT:-/tmp/spaceport_bench_out}
mkdir -p "$OUT"
WS=/tmp/spaceport_e2e_monstree
if [ "$1" = train ]; then
  source bench/gpu_env.sh
  parts=" ${PARTS:-tests e2e compress throughput side} "
  if [[ $parts == *" tests "* ]]; then
    { timeout 200 python3 -m pytest tests/gpu -q -x -p no:cacheprovider 2>&1 | tail -25; } > "$OUT/log_gpu_tests.txt"
    tail -3 "$OUT/log_gpu_tests.txt"
  fi
  if [[ $parts == *" e2e "* ]]; then
    timeout 200 python3 bench/e2e.py .data_monstree --name monstree > "$OUT/log_e2e.txt" 2>&1
    grep -E "held-out|time:" "$OUT/log_e2e.txt" | tail -4
    cp "$(ls $WS/train/renders/*.png | head -1)" "$OUT/render0.png"
  fi
  # without a kit gsplat was just built: send the build back for `bash bench/make_gpu_kit.sh kit torch_ext.tgz`
  [ -f .gpu/gsplat_kit.tar.xz ] || tar czf "$OUT/torch_ext.tgz" -C /tmp torch_ext
  if [[ $parts == *" compress "* ]]; then
    timeout 150 python3 bench/compress_quality.py --workspace $WS --device cuda --set defaults \
      --variant 'GPU presets={"prune_threshold":2.0,"sh_drop_threshold":0.0627}' \
      --variant 'prune 3 drop 16={"prune_threshold":3.0,"sh_drop_threshold":0.0627}' \
      --out "$OUT/compress_quality.json" > "$OUT/log_cq.txt" 2>&1; tail -6 "$OUT/log_cq.txt"
  fi
  if [[ $parts == *" throughput "* ]]; then
    timeout 100 python3 bench/train_gpu.py --workspace $WS --runs throughput --profile --throughput-steps 1500 \
      --json "$OUT/train_gpu.json" > "$OUT/log_train_gpu.txt" 2>&1
  fi
  if [[ $parts == *" side "* ]]; then  # SIDE_RUNS: e.g. "standard quality plain" (quality ~2 min, plain ~3 min)
    # shellcheck disable=SC2086  # SIDE_RUNS is a list of run names
    timeout 420 python3 bench/train_gpu.py --workspace $WS --runs ${SIDE_RUNS:-standard plain} \
      --plain-steps "${PLAIN_STEPS:-10000}" --json "$OUT/train_gpu.json" >> "$OUT/log_train_gpu.txt" 2>&1
    tail -8 "$OUT/log_train_gpu.txt"
  fi
elif [ "$1" = splat-transform ]; then
  for f in .gpu/gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f $icd ] && export VK_DRIVER_FILES=$icd
  # gpu_env.sh's variables without unpacking again; another TORCH_CUDA_ARCH_LIST would make torch rebuild gsplat
  export PYTHONPATH=$PWD:/tmp/site TORCH_EXTENSIONS_DIR=/tmp/torch_ext MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
  export PYTHONUNBUFFERED=1
  tar xJf .gpu/nodekit.tar.xz -C /tmp; export PATH=/tmp/bin:$PATH
  rm -rf tests/js/node_modules; ln -s /tmp/node_modules tests/js/node_modules
  timeout 300 python3 bench/compress.py --workspace $WS --devices cpu,cuda --threads 16 --st-gpu 0 --st-iterations -1 \
    --st-timeout 200 --out "$OUT/compress_side.json" > "$OUT/log_cs.txt" 2>&1; tail -8 "$OUT/log_cs.txt"
else
  echo "usage: bash bench/gpu_monstree.sh train|splat-transform" >&2; exit 2
fi
