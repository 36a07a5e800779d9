# Issues 13 and 14 on the lent GPU in two calls, the second within 30 s of the first (the machine stays warm).
# Logs and JSON go to $OUT.
#   bash bench/gpu_monstree.sh train            carry .gpu/site_nogsplat.tar.xz .gpu/gsplat_kit.tar.xz .data_monstree
#                                               (or the gsplat wheel instead of the kit: it builds, ~80 s)
#       the GPU fast-path tests, monstree photos -> SOG with `standard`, the compression variants on that splat, the
#       1M-Gaussian throughput row with its profile, and the plain recipe (PLAIN_STEPS, default 10000; 0: not run)
#   bash bench/gpu_monstree.sh splat-transform  carry .gpu/nodekit.tar.xz .gpu/gl
#       ours (as the job ran: the preset's compress settings) and splat-transform 3.7.0 on WebGPU on the same splat.
#       It unpacks GL libraries into / and re-runs ldconfig for the WebGPU path: keep it after the timed runs
set -o pipefail
OUT=${OUT:-/tmp/spaceport_bench_out}
mkdir -p "$OUT"
WS=/tmp/spaceport_e2e_monstree
if [ "$1" = train ]; then
  source bench/gpu_env.sh
  { timeout 200 python3 -m pytest tests/gpu -q -x -p no:cacheprovider 2>&1 | tail -25; } > "$OUT/log_gpu_tests.txt"
  tail -3 "$OUT/log_gpu_tests.txt"
  # without a kit gsplat was just built: send the build back for `bash bench/make_gpu_kit.sh kit torch_ext.tgz`
  [ -f .gpu/gsplat_kit.tar.xz ] || tar czf "$OUT/torch_ext.tgz" -C /tmp torch_ext
  timeout 200 python3 bench/e2e.py .data_monstree --name monstree > "$OUT/log_e2e.txt" 2>&1
  grep -E "held-out|time:" "$OUT/log_e2e.txt" | tail -4
  cp "$(ls $WS/train/renders/*.png | head -1)" "$OUT/render0.png"
  timeout 150 python3 bench/compress_quality.py --workspace $WS --device cuda --set defaults \
    --variant 'GPU presets={"prune_threshold":2.0,"sh_drop_threshold":0.0627}' \
    --variant 'prune 3 drop 16={"prune_threshold":3.0,"sh_drop_threshold":0.0627}' \
    --out "$OUT/compress_quality.json" > "$OUT/log_cq.txt" 2>&1; tail -6 "$OUT/log_cq.txt"
  timeout 100 python3 bench/train_gpu.py --workspace $WS --runs throughput --profile --throughput-steps 1500 \
    --json "$OUT/train_gpu.json" > "$OUT/log_train_gpu.txt" 2>&1
  [ "${PLAIN_STEPS:-10000}" = 0 ] && exit 0  # PLAIN_STEPS=0: no side-by-side run (it takes ~4 minutes)
  timeout 320 python3 bench/train_gpu.py --workspace $WS --runs standard plain --plain-steps "${PLAIN_STEPS:-10000}" \
    --json "$OUT/train_gpu.json" >> "$OUT/log_train_gpu.txt" 2>&1; tail -8 "$OUT/log_train_gpu.txt"
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
