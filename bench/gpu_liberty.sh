# Liberty photos -> SOG on the lent GPU with GPU SIFT (issue 12's acceptance run), then the same SfM trained again
# with any extra settings given (e.g. --set scene_extent=2.0). Logs, the SfM report, the e2e JSON and two held-out
# renders go to $OUT. Two calls, the second within 30 s of the first (the machine stays warm):
#   1. carry .gpu/cu12.tar.xz:                                   tar xJf .gpu/cu12.tar.xz -C /tmp
#   2. carry .gpu/site_nogsplat.tar.xz .gpu/gsplat_kit.tar.xz .data_liberty:  bash bench/gpu_liberty.sh [--set F=V ...]
set -o pipefail; source bench/gpu_env.sh
site_packages=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
curand=$(dirname "$(find "$site_packages/nvidia" -name 'libcurand.so.10*' | head -1)")  # CUDA 13's serves pycolmap
export PYTHONPATH=$PWD:/tmp/sitecu:/tmp/site
export LD_LIBRARY_PATH=/tmp/sitecu/nvidia/cuda_runtime/lib:/tmp/debs/usr/lib/x86_64-linux-gnu:$curand:$LD_LIBRARY_PATH
OUT=${OUT:-/tmp/spaceport_bench_out}; mkdir -p "$OUT"
python3 -c "import pycolmap; print('pycolmap', pycolmap.__version__, 'cuda', pycolmap.has_cuda)"
python3 -c "from gsplat.cuda._backend import _C; print('gsplat ready')" 2>&1 | tail -1
WS=/tmp/spaceport_e2e_liberty
timeout 430 python3 bench/e2e.py .data_liberty --name liberty > "$OUT/log_e2e_liberty.txt" 2>&1
grep -E "sfm|held-out|train:|time:|registered|focal" "$OUT/log_e2e_liberty.txt" | tail -40
cp $WS/sfm/report.json "$OUT/sfm_report_liberty.json"
# without a kit gsplat was just built: send the build back for `bash bench/make_gpu_kit.sh kit torch_ext.tgz`
[ -f .gpu/gsplat_kit.tar.xz ] || tar czf "$OUT/torch_ext.tgz" -C /tmp torch_ext
for f in $(ls $WS/train/renders/*.png | head -2); do cp "$f" "$OUT/liberty_$(basename "$f")"; done
if [ $# -gt 0 ]; then
  timeout 110 python3 bench/train_gpu.py --workspace $WS --runs standard --label variant "$@" --set num_renders=0 \
    --json "$OUT/train_gpu_liberty.json" > "$OUT/log_tg_liberty.txt" 2>&1
  grep -E "held-out|extent" "$OUT/log_tg_liberty.txt" | tail -8
fi
