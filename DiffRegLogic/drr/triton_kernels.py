"""Triton kernels of the fused GPU renderers (imported on first use by `fused_triton`).

This module imports triton and decorates its kernels at import time, which
is when Triton decides between compiling for the GPU and its CPU interpreter
(``TRITON_INTERPRET=1``); `fused_triton` therefore imports it lazily, so the
engine imports without triton and the environment variable can be set any
time before the first Triton render.

The math is that of the numba kernels in `fused_cpu` (and of the PyTorch
reference renderers), in float32: see `fused_cpu`'s docstring for the
formulas. Layout, shared by both kernels:

* ``vol``: the (K, J, I) volume, flat and contiguous, in its storage dtype
  (float32, float16 or bfloat16); every sample is converted to float32;
* ``src``, ``d``: (N, 3) float32 ray source and direction in index space;
  ``tn``, ``tf``: (N,) float32 entry and exit alpha;
* ``out``: (N,) float32 integrals in alpha units;
* ``part``: (N, 8) float32 d out / d (s0, s1, s2, d0, d1, d2, tn, tf), written
  only when ``WITH_GRAD``.

The ``*_camera_kernel`` variants (forward only, for renders without
autograd) build each ray in the kernel from a (B, 17) per-pose table instead
(see `_camera_rays`) and write DRR pixels in mm x 1/mm: one launch per render
and no per-ray tensors at all.

One program handles ``BLOCK`` rays and loops over the largest step (or
crossing) count of its block, masking the rays that are done. Each ray's sums
run in a fixed order inside one program, with no atomics, so the results are
deterministic (bitwise reproducible for a given GPU, Triton version and
block size).
"""

from __future__ import annotations

import triton
import triton.language as tl

_BIG = tl.constexpr(3.0e38)  # "no pending crossing" (float32)


@triton.jit
def _cell(p, n):
    """Border-clamped coordinate -> (lower corner, fraction, gradient gate) along one axis of n >= 2 voxels.

    As grid_sample's border padding: p is clamped to [0, n - 1]; the gate is 0
    where it was clamped (p <= 0 or p >= n - 1). The lower corner stays <= n - 2.
    """
    top = n - 1.0
    gate = ((p > 0.0) & (p < top)).to(tl.float32)
    q = tl.minimum(tl.maximum(p, 0.0), top)
    lo = tl.minimum(tl.floor(q).to(tl.int32), n - 2)
    return lo, q - lo.to(tl.float32), gate


@triton.jit
def _sample(vol, ni, nj, nk, pi, pj, pk, mask):
    """Trilinear value of the volume at index point (pi, pj, pk) and its gradient (d/dpi, d/dpj, d/dpk)."""
    i0, fi, gi = _cell(pi, ni)
    j0, fj, gj = _cell(pj, nj)
    k0, fk, gk = _cell(pk, nk)
    nij = ni * nj
    base = k0 * nij + j0 * ni + i0
    c000 = tl.load(vol + base, mask=mask, other=0.0).to(tl.float32)
    c001 = tl.load(vol + base + 1, mask=mask, other=0.0).to(tl.float32)
    c010 = tl.load(vol + base + ni, mask=mask, other=0.0).to(tl.float32)
    c011 = tl.load(vol + base + ni + 1, mask=mask, other=0.0).to(tl.float32)
    c100 = tl.load(vol + base + nij, mask=mask, other=0.0).to(tl.float32)
    c101 = tl.load(vol + base + nij + 1, mask=mask, other=0.0).to(tl.float32)
    c110 = tl.load(vol + base + nij + ni, mask=mask, other=0.0).to(tl.float32)
    c111 = tl.load(vol + base + nij + ni + 1, mask=mask, other=0.0).to(tl.float32)
    a00 = c000 + fi * (c001 - c000)
    a01 = c010 + fi * (c011 - c010)
    a10 = c100 + fi * (c101 - c100)
    a11 = c110 + fi * (c111 - c110)
    b0 = a00 + fj * (a01 - a00)
    b1 = a10 + fj * (a11 - a10)
    value = b0 + fk * (b1 - b0)
    di0 = (c001 - c000) + fj * ((c011 - c010) - (c001 - c000))
    di1 = (c101 - c100) + fj * ((c111 - c110) - (c101 - c100))
    d_i = (di0 + fk * (di1 - di0)) * gi
    d_j = ((a01 - a00) + fk * ((a11 - a10) - (a01 - a00))) * gj
    d_k = (b1 - b0) * gk
    return value, d_i, d_j, d_k


@triton.jit
def _load_rays(src, d, tn_ptr, tf_ptr, offs, live):
    """Ray n's source, direction (index space), t_near and t_far from the (N, 3), (N, 3), (N,), (N,) arrays."""
    s0 = tl.load(src + 3 * offs, mask=live, other=0.0)
    s1 = tl.load(src + 3 * offs + 1, mask=live, other=0.0)
    s2 = tl.load(src + 3 * offs + 2, mask=live, other=0.0)
    d0 = tl.load(d + 3 * offs, mask=live, other=1.0)
    d1 = tl.load(d + 3 * offs + 1, mask=live, other=1.0)
    d2 = tl.load(d + 3 * offs + 2, mask=live, other=1.0)
    tn = tl.load(tn_ptr + offs, mask=live, other=0.0)
    tf = tl.load(tf_ptr + offs, mask=live, other=0.0)
    return s0, s1, s2, d0, d1, d2, tn, tf


@triton.jit
def _store_partials(part, offs, live, g0, g1, g2, g3, g4, g5, g6, g7):
    row = part + 8 * offs
    tl.store(row, g0, mask=live)
    tl.store(row + 1, g1, mask=live)
    tl.store(row + 2, g2, mask=live)
    tl.store(row + 3, g3, mask=live)
    tl.store(row + 4, g4, mask=live)
    tl.store(row + 5, g5, mask=live)
    tl.store(row + 6, g6, mask=live)
    tl.store(row + 7, g7, mask=live)


@triton.jit
def _slab(s, dd, n):
    """Entry and exit alpha of the slab [-0.5, n - 0.5] along one axis (as rays.clip_to_box: tiny |d| -> 1e-9)."""
    safe = tl.where(tl.abs(dd) < 1e-9, 1e-9, dd)
    lo = (-0.5 - s) / safe
    hi = (n - 0.5 - s) / safe
    return tl.minimum(lo, hi), tl.maximum(lo, hi)


@triton.jit
def _camera_rays(cam, offs, live, pixels, cols, ni, nj, nk):
    """Rays of flat ray indices ``offs`` = pose * pixels + row * cols + col, built from the per-pose table.

    ``cam`` is (B, 17) float32: index_from_camera's 3x3 linear part A (row-major), the source in index
    space, then sdd, du, dv, cx, cy. The pixel (row r, col c) sits at camera point
    ((c - cx) du, (r - cy) dv, sdd); its ray is source + alpha A (camera point), alpha in [0, 1], of
    length |camera point| mm; t_near, t_far as `rays.clip_to_box`.
    """
    b = offs // pixels
    p = offs - b * pixels
    r = p // cols
    c = p - r * cols
    row = cam + 17 * b
    a00 = tl.load(row, mask=live, other=0.0)
    a01 = tl.load(row + 1, mask=live, other=0.0)
    a02 = tl.load(row + 2, mask=live, other=0.0)
    a10 = tl.load(row + 3, mask=live, other=0.0)
    a11 = tl.load(row + 4, mask=live, other=0.0)
    a12 = tl.load(row + 5, mask=live, other=0.0)
    a20 = tl.load(row + 6, mask=live, other=0.0)
    a21 = tl.load(row + 7, mask=live, other=0.0)
    a22 = tl.load(row + 8, mask=live, other=0.0)
    s0 = tl.load(row + 9, mask=live, other=0.0)
    s1 = tl.load(row + 10, mask=live, other=0.0)
    s2 = tl.load(row + 11, mask=live, other=0.0)
    sdd = tl.load(row + 12, mask=live, other=1.0)
    du = tl.load(row + 13, mask=live, other=0.0)
    dv = tl.load(row + 14, mask=live, other=0.0)
    cx = tl.load(row + 15, mask=live, other=0.0)
    cy = tl.load(row + 16, mask=live, other=0.0)
    x = (c.to(tl.float32) - cx) * du
    y = (r.to(tl.float32) - cy) * dv
    d0 = tl.where(live, a00 * x + a01 * y + a02 * sdd, 1.0)
    d1 = tl.where(live, a10 * x + a11 * y + a12 * sdd, 1.0)
    d2 = tl.where(live, a20 * x + a21 * y + a22 * sdd, 1.0)
    length = tl.sqrt(x * x + y * y + sdd * sdd)
    lo0, hi0 = _slab(s0, d0, ni)
    lo1, hi1 = _slab(s1, d1, nj)
    lo2, hi2 = _slab(s2, d2, nk)
    tn = tl.maximum(tl.maximum(tl.maximum(lo0, lo1), lo2), 0.0)
    tf = tl.minimum(tl.minimum(tl.minimum(hi0, hi1), hi2), 1.0)
    tf = tl.where(live, tl.maximum(tf, tn), 0.0)
    tn = tl.where(live, tn, 0.0)
    return s0, s1, s2, d0, d1, d2, tn, tf, length


@triton.jit
def trilinear_kernel(vol, src, d, tn_ptr, tf_ptr, out, part, n_rays, ni, nj, nk, step_voxels,
                     WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """Midpoint-rule integrals (alpha units) of ``BLOCK`` rays given as arrays, and their partials."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n_rays
    s0, s1, s2, d0, d1, d2, tn, tf = _load_rays(src, d, tn_ptr, tf_ptr, offs, live)
    value, g0, g1, g2, g3, g4, g5, g6, g7 = _trilinear_ray(vol, ni, nj, nk, s0, s1, s2, d0, d1, d2, tn, tf, live,
                                                           step_voxels, WITH_GRAD, BLOCK)
    tl.store(out + offs, value, mask=live)
    if WITH_GRAD:
        _store_partials(part, offs, live, g0, g1, g2, g3, g4, g5, g6, g7)


@triton.jit
def trilinear_camera_kernel(vol, cam, out, n_rays, pixels, cols, ni, nj, nk, step_voxels, BLOCK: tl.constexpr):
    """DRR pixels (mm x 1/mm) of ``BLOCK`` rays built in the kernel from the per-pose table (no autograd)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n_rays
    s0, s1, s2, d0, d1, d2, tn, tf, length = _camera_rays(cam, offs, live, pixels, cols, ni, nj, nk)
    value, g0, g1, g2, g3, g4, g5, g6, g7 = _trilinear_ray(vol, ni, nj, nk, s0, s1, s2, d0, d1, d2, tn, tf, live,
                                                           step_voxels, False, BLOCK)
    tl.store(out + offs, value * length, mask=live)


@triton.jit
def _trilinear_ray(vol, ni, nj, nk, s0, s1, s2, d0, d1, d2, tn, tf, live, step_voxels,
                   WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """Midpoint-rule integral (alpha units) of ``BLOCK`` rays: full steps of h = step / max|d|, then the
    partial step; with ``WITH_GRAD`` also d value / d (s0, s1, s2, d0, d1, d2, tn, tf) (else not meaningful)."""
    a0 = tl.abs(d0)
    a1 = tl.abs(d1)
    a2 = tl.abs(d2)
    big = tl.maximum(tl.maximum(a0, a1), a2)
    h = step_voxels / big
    chord = tf - tn
    # a chord inside the box spans at most max(n) voxels along the dominant axis: the cap bounds the loop on
    # extreme rays (and keeps the int32 conversion in range)
    cap = tl.ceil(tl.maximum(tl.maximum(ni, nj), nk).to(tl.float32) / step_voxels) + 2.0
    whole = tl.minimum(tl.floor(chord / h), cap)
    rest = chord - whole * h
    n_whole = tl.where(live, whole.to(tl.int32), 0)
    n_max = tl.max(n_whole, axis=0)
    # raw sums over the full samples: V = sum f, S = sum grad f, D = sum alpha grad f
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    gs0 = tl.zeros([BLOCK], dtype=tl.float32)
    gs1 = tl.zeros([BLOCK], dtype=tl.float32)
    gs2 = tl.zeros([BLOCK], dtype=tl.float32)
    gd0 = tl.zeros([BLOCK], dtype=tl.float32)
    gd1 = tl.zeros([BLOCK], dtype=tl.float32)
    gd2 = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, n_max):
        on = k < n_whole
        a = tn + (k + 0.5) * h
        v, fi, fj, fk = _sample(vol, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2, on)
        acc += tl.where(on, v, 0.0)
        if WITH_GRAD:
            fi = tl.where(on, fi, 0.0)
            fj = tl.where(on, fj, 0.0)
            fk = tl.where(on, fk, 0.0)
            gs0 += fi
            gs1 += fj
            gs2 += fk
            gd0 += a * fi
            gd1 += a * fj
            gd2 += a * fk
    a = tn + whole * h + 0.5 * rest
    v, fi, fj, fk = _sample(vol, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2, live)
    value = acc * h + rest * v
    gtn = tl.zeros([BLOCK], dtype=tl.float32)
    gtf = tl.zeros([BLOCK], dtype=tl.float32)
    if WITH_GRAD:
        # d V_full / d alpha_k = h grad f_k . d with alpha_k = tn + (k + 1/2) h, so
        # d/d tn = h (d . S) and d/d h = V + d . D - tn (d . S)
        d_dot_s = d0 * gs0 + d1 * gs1 + d2 * gs2
        gtn = h * d_dot_s
        gh = acc + (d0 * gd0 + d1 * gd1 + d2 * gd2) - tn * d_dot_s
        slope = rest * (fi * d0 + fj * d1 + fk * d2)
        gs0 = gs0 * h + rest * fi
        gs1 = gs1 * h + rest * fj
        gs2 = gs2 * h + rest * fk
        gd0 = gd0 * h + rest * a * fi
        gd1 = gd1 * h + rest * a * fj
        gd2 = gd2 * h + rest * a * fk
        gtn += 0.5 * slope - v
        gtf = 0.5 * slope + v
        gh += 0.5 * whole * slope - whole * v
        # h = step / max|d|: d h / d d_a = -h / d_a for the dominant component, shared between tied ones
        is0 = a0 == big
        is1 = a1 == big
        is2 = a2 == big
        share = gh * h / (is0.to(tl.float32) + is1.to(tl.float32) + is2.to(tl.float32))
        gd0 -= tl.where(is0, share / tl.where(is0, d0, 1.0), 0.0)
        gd1 -= tl.where(is1, share / tl.where(is1, d1, 1.0), 0.0)
        gd2 -= tl.where(is2, share / tl.where(is2, d2, 1.0), 0.0)
    return value, gs0, gs1, gs2, gd0, gd1, gd2, gtn, gtf


@triton.jit
def _siddon_axis(s, dd, tn, tf, n_axis, stride):
    """Per-axis Siddon state as the reference builds it: entry voxel, crossing count, first alpha, increment,
    flat-index step, and the (never tiny) divisor."""
    pin = s + tn * dd
    pout = s + tf * dd
    forward = dd > 0.0
    voxel = tl.where(forward, tl.floor(pin + 0.5), tl.ceil(pin + 0.5) - 1.0)
    voxel = tl.minimum(tl.maximum(voxel, 0.0), n_axis - 1.0)
    lo = tl.minimum(pin, pout)
    hi = tl.maximum(pin, pout)
    count = tl.maximum(tl.ceil(hi + 0.5) - 1.0 - tl.floor(lo + 0.5), 0.0)
    parallel = tl.abs(dd) < 1e-9  # parallel to this axis's planes: no crossings (as the reference)
    count = tl.where(parallel, 0.0, count)
    # a ray inside the box crosses at most the n + 1 planes of the axis: bounds the loop on extreme rays
    count = tl.minimum(count, n_axis + 1.0)
    step = tl.where(forward, 1.0, -1.0)
    safe = tl.where(parallel, 1e-9, dd)
    first = (voxel + 0.5 * step - s) / safe
    delta = tl.where(forward, stride, -stride)
    return voxel.to(tl.int32), count.to(tl.int32), first, step / safe, delta, safe


@triton.jit
def siddon_kernel(vol, src, d, tn_ptr, tf_ptr, out, part, n_rays, ni, nj, nk,
                  WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """Exact radiological paths (alpha units) of ``BLOCK`` rays given as arrays, and their partials."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n_rays
    s0, s1, s2, d0, d1, d2, tn, tf = _load_rays(src, d, tn_ptr, tf_ptr, offs, live)
    value, g0, g1, g2, g3, g4, g5, g6, g7 = _siddon_ray(vol, ni, nj, nk, s0, s1, s2, d0, d1, d2, tn, tf, live,
                                                        WITH_GRAD, BLOCK)
    tl.store(out + offs, value, mask=live)
    if WITH_GRAD:
        _store_partials(part, offs, live, g0, g1, g2, g3, g4, g5, g6, g7)


@triton.jit
def siddon_camera_kernel(vol, cam, out, n_rays, pixels, cols, ni, nj, nk, BLOCK: tl.constexpr):
    """DRR pixels (mm x 1/mm) of ``BLOCK`` rays built in the kernel from the per-pose table (no autograd)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n_rays
    s0, s1, s2, d0, d1, d2, tn, tf, length = _camera_rays(cam, offs, live, pixels, cols, ni, nj, nk)
    value, g0, g1, g2, g3, g4, g5, g6, g7 = _siddon_ray(vol, ni, nj, nk, s0, s1, s2, d0, d1, d2, tn, tf, live,
                                                        False, BLOCK)
    tl.store(out + offs, value * length, mask=live)


@triton.jit
def _siddon_ray(vol, ni, nj, nk, s0, s1, s2, d0, d1, d2, tn, tf, live, WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """Exact radiological path (alpha units) of ``BLOCK`` rays: walk the sorted plane crossings (Jacobs'
    order); with ``WITH_GRAD`` also d value / d (s0, s1, s2, d0, d1, d2, tn, tf) (else not meaningful)."""
    nij = ni * nj
    numel = nij * nk
    v0, c0, f0, i0, e0, q0 = _siddon_axis(s0, d0, tn, tf, ni, 1)
    v1, c1, f1, i1, e1, q1 = _siddon_axis(s1, d1, tn, tf, nj, ni)
    v2, c2, f2, i2, e2, q2 = _siddon_axis(s2, d2, tn, tf, nk, nij)
    crossings = tl.where(live, c0 + c1 + c2, 0)
    n_max = tl.max(crossings, axis=0)
    cur = v0 + v1 * ni + v2 * nij
    mu_cur = tl.load(vol + tl.minimum(tl.maximum(cur, 0), numel - 1), mask=live, other=0.0).to(tl.float32)
    k0 = tl.zeros([BLOCK], dtype=tl.int32)
    k1 = tl.zeros([BLOCK], dtype=tl.int32)
    k2 = tl.zeros([BLOCK], dtype=tl.int32)
    prev = tn
    total = tl.zeros([BLOCK], dtype=tl.float32)
    g_s0 = tl.zeros([BLOCK], dtype=tl.float32)
    g_s1 = tl.zeros([BLOCK], dtype=tl.float32)
    g_s2 = tl.zeros([BLOCK], dtype=tl.float32)
    g_d0 = tl.zeros([BLOCK], dtype=tl.float32)
    g_d1 = tl.zeros([BLOCK], dtype=tl.float32)
    g_d2 = tl.zeros([BLOCK], dtype=tl.float32)
    g_tn = -mu_cur  # entry: weight 0 - mu_first
    g_tf = tl.zeros([BLOCK], dtype=tl.float32)
    for it in range(0, n_max):
        on = it < crossings
        # next crossing: the smallest pending alpha; ties go to the lower axis (as fused_cpu)
        best = tl.where(k0 < c0, f0 + k0.to(tl.float32) * i0, _BIG)
        axis = tl.zeros([BLOCK], dtype=tl.int32)
        cand = f1 + k1.to(tl.float32) * i1
        take = (k1 < c1) & (cand < best)
        best = tl.where(take, cand, best)
        axis = tl.where(take, 1, axis)
        cand = f2 + k2.to(tl.float32) * i2
        take = (k2 < c2) & (cand < best)
        best = tl.where(take, cand, best)
        axis = tl.where(take, 2, axis)
        # crossings stay within [t_near, t_far]; a clamped one moves with that end
        high = best > tf
        low = (best < tn) & (~high)
        alpha = tl.where(high, tf, tl.where(low, tn, best))
        total += tl.where(on, (alpha - prev) * mu_cur, 0.0)
        on0 = on & (axis == 0)
        on1 = on & (axis == 1)
        on2 = on & (axis == 2)
        cur += tl.where(on0, e0, 0) + tl.where(on1, e1, 0) + tl.where(on2, e2, 0)
        k0 += on0.to(tl.int32)
        k1 += on1.to(tl.int32)
        k2 += on2.to(tl.int32)
        mu_next = tl.load(vol + tl.minimum(tl.maximum(cur, 0), numel - 1), mask=on, other=0.0).to(tl.float32)
        if WITH_GRAD:
            w = mu_cur - mu_next
            free = ~(high | low)
            g_tf += tl.where(on & high, w, 0.0)
            g_tn += tl.where(on & low, w, 0.0)
            g_s0 -= tl.where(on0 & free, w / q0, 0.0)
            g_s1 -= tl.where(on1 & free, w / q1, 0.0)
            g_s2 -= tl.where(on2 & free, w / q2, 0.0)
            g_d0 -= tl.where(on0 & free & (tl.abs(d0) >= 1e-9), w * alpha / q0, 0.0)
            g_d1 -= tl.where(on1 & free & (tl.abs(d1) >= 1e-9), w * alpha / q1, 0.0)
            g_d2 -= tl.where(on2 & free & (tl.abs(d2) >= 1e-9), w * alpha / q2, 0.0)
        mu_cur = tl.where(on, mu_next, mu_cur)
        prev = tl.where(on, alpha, prev)
    total += (tf - prev) * mu_cur
    if WITH_GRAD:
        g_tf += mu_cur  # exit: weight mu_last - 0
    return total, g_s0, g_s1, g_s2, g_d0, g_d1, g_d2, g_tn, g_tf
