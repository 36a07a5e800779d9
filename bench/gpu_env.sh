# Source this on the lent GPU machine (no internet there): installs the carried dependencies and reuses the
# carried gsplat CUDA build. Carry `.gpu/` made on the dev machine with:
#   site_nogsplat.tar.xz  pycolmap and the small pure-Python deps, unpacked wheels repacked with xz (64 MiB limit)
#   gsplat_kit.tar.xz     gsplat_site/ (the unpacked gsplat 1.5.3 wheel) and torch_ext/ (its compiled extension
#                         from a first run's TORCH_EXTENSIONS_DIR, which saves the ~80 s build): 7.4 MB with xz
#   or gsplat-1.5.3-py3-none-any.whl (and optionally torch_ext.tgz) when there is no kit yet
set -e
if [ -d /tmp/site/gsplat ] && [ -d /tmp/torch_ext ]; then
  :  # a warm machine's earlier call unpacked and built them (unpacking the wheel again would make gsplat rebuild)
elif ! tar xJf .gpu/site_nogsplat.tar.xz -C /tmp; then
  echo "carry .gpu/site_nogsplat.tar.xz (and the gsplat kit or wheel): /tmp/site is not there" >&2; false
elif [ -f .gpu/gsplat_kit.tar.xz ]; then
  tar xJf .gpu/gsplat_kit.tar.xz -C /tmp
  cp -a /tmp/gsplat_site/. /tmp/site/  # cp -a keeps the wheel's old mtimes, so ninja finds the carried build fresh
else
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/gsplat-*.whl
  [ -f .gpu/torch_ext.tgz ] && tar xzf .gpu/torch_ext.tgz -C /tmp
fi
export PYTHONPATH=$PWD:/tmp/site TORCH_EXTENSIONS_DIR=/tmp/torch_ext MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
export PYTHONUNBUFFERED=1
set +e
