# Source this on the lent GPU machine (no internet there): installs the carried dependencies and reuses the
# carried gsplat CUDA build. Carry `.gpu/` made on the dev machine with:
#   site_nogsplat.tar.xz  pycolmap and the small pure-Python deps, unpacked wheels repacked with xz (64 MiB limit)
#   gsplat-1.5.3-py3-none-any.whl, torch_ext.tgz (its compiled extension, from a first run's TORCH_EXTENSIONS_DIR)
set -e
tar xJf .gpu/site_nogsplat.tar.xz -C /tmp
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .gpu/gsplat-*.whl
[ -f .gpu/torch_ext.tgz ] && tar xzf .gpu/torch_ext.tgz -C /tmp
export PYTHONPATH=$PWD:/tmp/site TORCH_EXTENSIONS_DIR=/tmp/torch_ext MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
export PYTHONUNBUFFERED=1
set +e
