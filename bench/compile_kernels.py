"""Compile the Triton kernels ahead of time for an NVIDIA GPU, without one, and report their resources.

Triton's CPU interpreter (which the tests use) runs the kernel source but not
its compiler; this script runs the compiler (to PTX and, with the ptxas
shipped in the triton wheel, to a cubin) for each kernel variant and prints
the registers per thread and the local memory (spills) that cuobjdump
reports. It needs a triton with its NVIDIA backend, and must run without
``TRITON_INTERPRET=1`` (under the interpreter the kernels are not
compilable objects).

    python bench/compile_kernels.py                 # sm_90 (H100/H200), JSON on stdout
    python bench/compile_kernels.py --arch 80 --block 256
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


def compile_all(arch: int, block: int, storages: list[str]) -> list[dict]:
    """One row per (kernel, WITH_GRAD, volume storage): registers, local bytes, shared bytes, warps."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from DiffRegLogic.drr import triton_kernels as kernels

    target = GPUTarget("cuda", arch, 32)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    common = {"vol": "*fp32", "src": "*fp32", "d": "*fp32", "tn_ptr": "*fp32", "tf_ptr": "*fp32", "out": "*fp32",
              "part": "*fp32", "n_rays": "i32", "ni": "i32", "nj": "i32", "nk": "i32"}
    rows = []
    for name, fn, extra in (("trilinear", kernels.trilinear_kernel, {"step_voxels": "fp32"}),
                            ("siddon", kernels.siddon_kernel, {})):
        for with_grad in (False, True):
            for storage in storages:
                signature = dict(common, **extra, WITH_GRAD="constexpr", BLOCK="constexpr")
                signature["vol"] = "*" + storage
                compiled = triton.compile(ASTSource(fn=fn, signature=signature,
                                                    constexprs={"WITH_GRAD": with_grad, "BLOCK": block}),
                                          target=target)
                rows.append(_resources(compiled, cuobjdump, {"kernel": name, "with_grad": with_grad,
                                                             "storage": storage, "arch": arch, "block": block}))
    camera = {"vol": "*fp32", "cam": "*fp32", "out": "*fp32", "n_rays": "i32", "pixels": "i32", "cols": "i32",
              "ni": "i32", "nj": "i32", "nk": "i32"}
    for name, fn, extra in (("trilinear_camera", kernels.trilinear_camera_kernel, {"step_voxels": "fp32"}),
                            ("siddon_camera", kernels.siddon_camera_kernel, {})):
        for storage in storages:
            signature = dict(camera, **extra, BLOCK="constexpr")
            signature["vol"] = "*" + storage
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs={"BLOCK": block}),
                                      target=target)
            rows.append(_resources(compiled, cuobjdump, {"kernel": name, "with_grad": False, "storage": storage,
                                                         "arch": arch, "block": block}))
    return rows


def _resources(compiled, cuobjdump: str, row: dict) -> dict:
    """``row`` plus warps, PTX size, and (with cuobjdump) registers, local (spill) and shared bytes per thread."""
    row = dict(row, num_warps=compiled.metadata.num_warps, ptx_chars=len(compiled.asm.get("ptx", "")))
    if "cubin" in compiled.asm and os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
            handle.write(compiled.asm["cubin"])
        try:
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", handle.name],
                                   capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(handle.name)
        for key, field in (("registers", "REG"), ("local_bytes", "LOCAL"), ("shared_bytes", "SHARED")):
            match = re.search(rf"\b{field}:(\d+)", usage)
            row[key] = int(match.group(1)) if match else None
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    parser.add_argument("--block", type=int, default=None, help="rays per program (default: fused_triton.BLOCK)")
    parser.add_argument("--storage", nargs="+", default=["fp32", "fp16", "bf16"])
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    from DiffRegLogic.drr import fused_triton

    try:
        rows = compile_all(args.arch, args.block or fused_triton.BLOCK, args.storage)
    except (TypeError, ImportError, AttributeError) as exc:  # another triton's ahead-of-time API, or no NVIDIA backend
        print(f"cannot compile ahead of time with triton here: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
