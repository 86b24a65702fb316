#!/usr/bin/env bash
# Build the optional CUDA kernels (extra `cuda`: mamba-ssm + causal-conv1d) from their PyPI
# source distributions, for machines where no prebuilt wheel matches the installed torch/CUDA.
#
#   bash scripts/build_cuda_kernels.sh            # builds for the GPU in this machine
#   CUDA_ARCHS="9.0" bash scripts/build_cuda_kernels.sh   # e.g. H100/H200 only
#
# Needs: nvcc, the CUDA build of torch already installed, ninja. Compiling for one architecture
# takes minutes instead of the better part of an hour for all of them.
set -euo pipefail
if [ -z "${CUDA_ARCHS:-}" ]; then
  CUDA_ARCHS=$(python -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}.{minor}')")
fi
export TORCH_CUDA_ARCH_LIST="$CUDA_ARCHS"
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
python -m pip install ninja packaging wheel
# --no-build-isolation: compile against the torch already installed, not a fresh download.
python -m pip install --no-build-isolation --no-binary causal-conv1d,mamba-ssm "causal-conv1d>=1.4" "mamba-ssm>=2.2"
python -c "import mamba_ssm, causal_conv1d; print('kernels ready:', mamba_ssm.__version__)"
