# Build .gpu/ (git-ignored) on the development machine: what the lent GPU machine (Python 3.12, torch + CUDA, no
# internet) lacks, packed to fit its 64 MiB per call. Needs the package registry; run from the repository root.
#   site_nogsplat.tar.xz  pycolmap and the small dependencies, unpacked (gpu_env.sh puts them on PYTHONPATH)
#   gsplat-1.5.3-py3-none-any.whl   gsplat; after a first run on the GPU, pack its build into gsplat_kit.tar.xz:
#                         tar czf $OUT/torch_ext.tgz -C /tmp torch_ext there, then here
#                         bash bench/make_gpu_kit.sh kit /work/.device/N/torch_ext.tgz
#   cu12.tar.xz           pycolmap-cuda12 (GPU SIFT) with the CUDA 12 runtime and libSM/libICE (Debian .debs)
#   nodekit.tar.xz        node and tests/js/node_modules (splat-transform 3.7.0) without other platforms' binaries
#   gl/                   Debian .debs of the Vulkan loader, libglvnd and the X libraries NVIDIA's Vulkan driver
#                         (libGLX_nvidia) links, for splat-transform's WebGPU path (the GPU machine's image has none)
set -euo pipefail
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$@"; }
mkdir -p .gpu
if [ "${1:-}" = kit ]; then  # gsplat_kit.tar.xz from the wheel and a GPU run's torch_ext.tgz
  work=$(mktemp -d); unzip -q .gpu/gsplat-1.5.3-py3-none-any.whl -d "$work/gsplat_site"
  tar xzf "$2" -C "$work"; tar cJf .gpu/gsplat_kit.tar.xz -C "$work" gsplat_site torch_ext; rm -rf "$work"
  exit 0
fi
work=$(mktemp -d)
download "$work/whl" pycolmap==4.2.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 plyfile==1.1.5 ImageHash==4.3.2 \
  PyWavelets==1.9.0 zstandard==0.25.0 pillow-heif==1.8.1 gsplat==1.5.3
mkdir "$work/site"
for wheel in "$work"/whl/*.whl; do
  case $wheel in *gsplat*) cp "$wheel" .gpu/ ;; *) unzip -q -o "$wheel" -d "$work/site" ;; esac
done
tar cJf .gpu/site_nogsplat.tar.xz -C "$work" site
download "$work/cu12" pycolmap-cuda12==4.2.1 nvidia-cuda-runtime-cu12
mkdir -p "$work/cu/sitecu" "$work/cu/debs"
for wheel in "$work"/cu12/*.whl; do unzip -q -o "$wheel" -d "$work/cu/sitecu"; done
rm -f "$work"/cu/sitecu/nvidia/cuda_runtime/lib/*.a
(cd "$work/cu12" && apt-get download libsm6 libice6 >/dev/null 2>&1)
for deb in "$work"/cu12/*.deb; do dpkg -x "$deb" "$work/cu/debs"; done
tar cJf .gpu/cu12.tar.xz -C "$work/cu" sitecu debs
mkdir -p .gpu/gl; (cd .gpu/gl && apt-get download libvulkan1 libglvnd0 libglx0 libgl1 libegl1 libx11-6 libx11-data \
  libx11-xcb1 libxext6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0 libxrandr2 libxrender1 libxi6 libxfixes3 >/dev/null 2>&1)
mkdir -p "$work/node/bin"; cp "$(command -v node)" "$work/node/bin/"
cp -a tests/js/node_modules "$work/node/node_modules"
(cd "$work/node/node_modules" && rm -f webgpu/dist/*.dll webgpu/dist/darwin* webgpu/dist/linux-arm64* \
  webgpu/dist/win32* && find . -name "*.map" -delete \
  && find playcanvas/build \( -name "*.dbg*" -o -name "*.prf*" -o -name "*.min*" \) -prune -exec rm -rf {} +)
tar cJf .gpu/nodekit.tar.xz -C "$work/node" bin node_modules
rm -rf "$work"
ls -la .gpu
