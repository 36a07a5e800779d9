# One call on the lent GPU (bench/README.md): the GPU fast-path tests, monstree photos -> SOG with `standard`, the
# compression variants on that splat, and the 1M-Gaussian throughput row with its profile. Logs and JSON go to $OUT.
#   run: bash bench/gpu_monstree.sh        (carry .gpu/site_nogsplat.tar.xz, .gpu/gsplat-*.whl, .data_monstree)
set -o pipefail
source bench/gpu_env.sh
OUT=${OUT:-/tmp/spaceport_bench_out}
mkdir -p "$OUT"
WS=/tmp/spaceport_e2e_monstree
{ timeout 200 python3 -m pytest tests/gpu/test_train_fast_paths_cuda.py -q -x -p no:cacheprovider -s 2>&1 | tail -25; } \
  > "$OUT/log_gpu_tests.txt"
tail -5 "$OUT/log_gpu_tests.txt"
timeout 260 python3 bench/e2e.py .data_monstree --name monstree > "$OUT/log_e2e.txt" 2>&1; tail -22 "$OUT/log_e2e.txt"
cp "$(ls $WS/train/renders/*.png | head -1)" "$OUT/render0.png"
timeout 150 python3 bench/compress_quality.py --workspace $WS --device cuda --set defaults \
  --variant 'fit all={"kmeans_fit_points":null}' --variant 'palette 4096={"palette_size":4096}' \
  --variant 'palette 2048={"palette_size":2048}' --variant 'SH drop 16={"sh_drop_threshold":0.0627}' \
  --variant 'prune 2px={"prune_threshold":2.0}' \
  --variant 'p4096 drop16 prune2={"palette_size":4096,"sh_drop_threshold":0.0627,"prune_threshold":2.0}' \
  --out "$OUT/compress_quality.json" > "$OUT/log_cq.txt" 2>&1; tail -14 "$OUT/log_cq.txt"
timeout 120 python3 bench/train_gpu.py --workspace $WS --runs throughput --profile --throughput-steps 1500 \
  --json "$OUT/train_gpu.json" > "$OUT/log_train_gpu.txt" 2>&1; tail -30 "$OUT/log_train_gpu.txt"
