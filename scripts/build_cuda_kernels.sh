#!/usr/bin/env bash
# Build the optional CUDA kernels (extra `cuda`: causal-conv1d + mamba-ssm) from their PyPI
# source distributions, for machines where no prebuilt wheel matches the installed torch/CUDA.
#
#   bash scripts/build_cuda_kernels.sh                      # fetch the sources, build for this machine's GPU
#   CUDA_ARCHS="90" bash scripts/build_cuda_kernels.sh      # H100 / H200 only
#   bash scripts/build_cuda_kernels.sh causal_conv1d-1.7.0.tar.gz mamba_ssm-2.3.2.post1.tar.gz   # offline
#
# Both packages' setup.py compile for a fixed list of GPU architectures (nine with CUDA 13) and
# ignore TORCH_CUDA_ARCH_LIST, so the script rewrites that list to CUDA_ARCHS before building:
# one architecture takes a few minutes instead of the better part of an hour.
# Needs: nvcc, the CUDA build of torch already installed, ninja, packaging, einops, triton.
# Packages are built with --no-build-isolation and --no-deps, so they compile against the
# torch already installed and pip never replaces it.
set -euo pipefail
if [ -z "${CUDA_ARCHS:-}" ]; then
  CUDA_ARCHS=$(python -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}{minor}')")
fi
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
work=$(mktemp -d)
if [ "$#" -eq 0 ]; then
  python -m pip download --no-deps --no-build-isolation --no-binary :all: -d "$work" causal-conv1d mamba-ssm
  set -- "$work"/causal_conv1d-*.tar.gz "$work"/mamba_ssm-*.tar.gz
fi
for archive in "$@"; do
  tar -xzf "$archive" -C "$work"
done
# Keep only the requested architectures' `-gencode arch=compute_NN,code=sm_NN` pairs.
CUDA_ARCHS="$CUDA_ARCHS" python - "$work"/*/setup.py <<'PYTHON'
import os, re, sys
keep = set(os.environ["CUDA_ARCHS"].replace(".", "").replace(",", " ").split())
pair = re.compile(r'( *)cc_flag\.append\("-gencode"\)\s*\n\s*cc_flag\.append\("arch=compute_(\d+),code=sm_\d+"\)\n')
for path in sys.argv[1:]:
    source = open(path).read()
    # A dropped pair becomes `pass`, so an `if nvcc >= X:` block that held only dropped pairs stays valid.
    patched = pair.sub(lambda match: match.group(0) if match.group(2) in keep else f"{match.group(1)}pass\n", source)
    if patched == source:
        sys.exit(f"{path}: no -gencode list found to restrict; build it unpatched or update this script")
    open(path, "w").write(patched)
    print(f"{path}: building for sm_{', sm_'.join(sorted(keep))} only")
PYTHON
pids=()
for source in "$work"/*/; do
  (cd "$source" && python -m pip install --no-build-isolation --no-deps --no-index .) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
python -c "import causal_conv1d as c, mamba_ssm as m; print('kernels ready: mamba-ssm', m.__version__, 'causal-conv1d', c.__version__)"
