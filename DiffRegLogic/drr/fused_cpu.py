"""Fused CPU renderers (numba): one compiled loop per ray, with an analytic backward.

Why numba: it installs from PyPI wheels on Linux, macOS and Windows for
CPython 3.10-3.13 (Slicer embeds 3.12), needs no compiler on the user's
machine (it ships LLVM in its llvmlite wheel), compiles plain loops over rays
to machine code and runs them in parallel with ``prange``. ``torch.compile``'s
CPU backend generates C++ and needs a C++ compiler at run time, which most
Slicer users on Windows and macOS do not have.

Both kernels compute exactly what the PyTorch reference renderers compute
(`DiffRegLogic.drr.siddon`, `DiffRegLogic.drr.trilinear`), ray by ray,
accumulating in float64, and never store anything per sample:

* forward: ``value[n] = integral of mu along ray n`` between ``t_near`` and
  ``t_far`` (alpha units; the caller multiplies by the ray length in mm);
* backward: for each ray, the derivatives of its value with respect to the
  ray's source point and direction (index space) and to ``t_near``/``t_far``,
  times the upstream gradient. Autograd chains them through the ray
  construction (`rays.pixel_rays`) to the pose and the intrinsics, exactly
  as it does for the reference.

Trilinear (midpoint rule, ``h = step / max|d|``, ``W = floor((tf - tn) / h)``
full steps plus one partial step of length ``rest = tf - tn - W h``): with
``f`` the border-clamped trilinear interpolant and ``alpha_k`` the sample
parameters,

    V = h sum_k f(s + alpha_k d) + rest f(s + alpha_L d),
    alpha_k = tn + (k + 1/2) h,  alpha_L = (tn + tf + W h) / 2,

so dV/ds = sum_k w_k grad f_k, dV/dd = sum_k w_k alpha_k grad f_k, and the
derivatives through ``tn``, ``tf`` and ``h`` (then ``h`` -> the dominant
component of ``d``) follow by the chain rule; ``W`` is piecewise constant.
Clamped coordinates have zero gradient, as in ``grid_sample``'s border mode.

Siddon: ``V = sum_c alpha_c (mu_before(c) - mu_after(c))`` over the sorted
crossings including entry and exit (summation by parts, as the reference's
surrogate); a crossing of plane ``p`` of axis ``a`` has ``alpha = (p - s_a) / d_a``,
so ``d alpha / d s_a = -1 / d_a`` and ``d alpha / d d_a = -alpha / d_a``.

Every loop is bounded by the box, whatever the rays: a Siddon ray walks at
most n + 1 planes per axis, a trilinear ray at most ``max(n) / step + 2``
full steps, so extreme or non-finite rays (which no `Detector` makes) end
with a meaningless value instead of looping for ever.

The compiled kernels are cached on disk by numba: in this package's
``drr/__pycache__``, or, when that is not writable (a shared install), in a
per-user folder (`DiffRegLogic.drr.numba_cache`; ``numba_cache.cache_dir()``
says which); with nothing writable they are compiled in every process.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from ..errors import InputError
from .numba_cache import cache_dir  # noqa: F401  (where the kernels are cached; see the module docstring)
from .numba_cache import configure as _configure_cache

try:  # optional at import: without numba the reference renderers are used
    import numba
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a dependency, but keep the engine importable without it
    numba = None
    AVAILABLE = False

if AVAILABLE:
    CACHE = _configure_cache()  # before the kernels are defined: where (and whether) numba caches them
    """True when the compiled kernels are cached on disk (`numba_cache.cache_dir` says where)."""

# Working memory per ray (bytes): rays, t-ranges, per-ray gradients (float64) and autograd's ray tensors.
BYTES_PER_RAY = 512

_TINY = 1e-9  # as the reference: direction components below this are treated as parallel

if AVAILABLE:

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _cell(p, n):
        """Border-clamped coordinate -> (lower corner, fraction, gradient gate) along one axis.

        As grid_sample's border padding: coordinates are clamped to [0, n - 1]
        and the gradient is 0 where they were clamped (p <= 0 or p >= n - 1).
        The lower corner stays <= n - 2 (fraction 1 at the last voxel centre),
        so both corners are always in bounds (every axis has >= 2 voxels).
        """
        gate = 1.0
        if p <= 0.0:
            p = 0.0
            gate = 0.0
        elif p >= n - 1.0:
            p = n - 1.0
            gate = 0.0
        lo = int(p)
        if lo > n - 2:
            lo = n - 2
        return lo, p - lo, gate

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _corners(flat, ni, nij, i0, j0, k0):
        base = k0 * nij + j0 * ni + i0
        return (flat[base], flat[base + 1], flat[base + ni], flat[base + ni + 1],
                flat[base + nij], flat[base + nij + 1], flat[base + nij + ni], flat[base + nij + ni + 1])

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _value(flat, ni, nj, nk, pi, pj, pk):
        """Trilinear value of the flat (K, J, I) volume at index point (pi, pj, pk)."""
        i0, fi, _ = _cell(pi, ni)
        j0, fj, _ = _cell(pj, nj)
        k0, fk, _ = _cell(pk, nk)
        c000, c001, c010, c011, c100, c101, c110, c111 = _corners(flat, ni, ni * nj, i0, j0, k0)
        a00 = c000 + fi * (c001 - c000)
        a01 = c010 + fi * (c011 - c010)
        a10 = c100 + fi * (c101 - c100)
        a11 = c110 + fi * (c111 - c110)
        b0 = a00 + fj * (a01 - a00)
        b1 = a10 + fj * (a11 - a10)
        return b0 + fk * (b1 - b0)

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _trilinear(flat, ni, nj, nk, pi, pj, pk):
        """Value and gradient (d/dpi, d/dpj, d/dpk) of the trilinear interpolant at (pi, pj, pk)."""
        i0, fi, gi = _cell(pi, ni)
        j0, fj, gj = _cell(pj, nj)
        k0, fk, gk = _cell(pk, nk)
        c000, c001, c010, c011, c100, c101, c110, c111 = _corners(flat, ni, ni * nj, i0, j0, k0)
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

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _fast_value(flat, ni, nij, pi, pj, pk):
        """`_value` for a point well inside [0, n - 1) on every axis: no clamping, no branches."""
        i0 = int(pi)
        j0 = int(pj)
        k0 = int(pk)
        fi = pi - i0
        fj = pj - j0
        fk = pk - k0
        c000, c001, c010, c011, c100, c101, c110, c111 = _corners(flat, ni, nij, i0, j0, k0)
        a00 = c000 + fi * (c001 - c000)
        a01 = c010 + fi * (c011 - c010)
        a10 = c100 + fi * (c101 - c100)
        a11 = c110 + fi * (c111 - c110)
        b0 = a00 + fj * (a01 - a00)
        b1 = a10 + fj * (a11 - a10)
        return b0 + fk * (b1 - b0)

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _fast_trilinear(flat, ni, nij, pi, pj, pk):
        """`_trilinear` for a point well inside [0, n - 1) on every axis (every gradient gate open)."""
        i0 = int(pi)
        j0 = int(pj)
        k0 = int(pk)
        fi = pi - i0
        fj = pj - j0
        fk = pk - k0
        c000, c001, c010, c011, c100, c101, c110, c111 = _corners(flat, ni, nij, i0, j0, k0)
        a00 = c000 + fi * (c001 - c000)
        a01 = c010 + fi * (c011 - c010)
        a10 = c100 + fi * (c101 - c100)
        a11 = c110 + fi * (c111 - c110)
        b0 = a00 + fj * (a01 - a00)
        b1 = a10 + fj * (a11 - a10)
        di0 = (c001 - c000) + fj * ((c011 - c010) - (c001 - c000))
        di1 = (c101 - c100) + fj * ((c111 - c110) - (c101 - c100))
        return (b0 + fk * (b1 - b0), di0 + fk * (di1 - di0), (a01 - a00) + fk * ((a11 - a10) - (a01 - a00)),
                b1 - b0)

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _inner_samples(s0, s1, s2, d0, d1, d2, ni, nj, nk, tn, h, whole):
        """Range [first, last) of full-step samples that lie inside [m, n - 1 - m] on every axis (m = 1e-6).

        Samples there need no clamping; the others take the general path. The
        kernels walk the three ranges in three loops with the same body, on
        purpose: the interior loop stays straight-line code without a
        per-sample branch between the two paths. (A single-loop variant was
        not faster in a quick, noisy A/B on the shared 2-core machine.)
        """
        lo_a = -1e300
        hi_a = 1e300
        for s_, d_, n_ in ((s0, d0, ni), (s1, d1, nj), (s2, d2, nk)):
            lo_p = 1e-6
            hi_p = n_ - 1.0 - 1e-6
            if d_ == 0.0:
                if s_ < lo_p or s_ > hi_p:
                    return 0, 0
                continue
            a = (lo_p - s_) / d_
            b = (hi_p - s_) / d_
            if a > b:
                a, b = b, a
            lo_a = max(lo_a, a)
            hi_a = min(hi_a, b)
        if hi_a <= lo_a:
            return 0, 0
        # sample k sits at alpha = tn + (k + 1/2) h; keep a one-sample safety margin at both ends
        first = int(max(0.0, math.ceil((lo_a - tn) / h - 0.5) + 1.0))
        last = int(min(whole, math.floor((hi_a - tn) / h - 0.5) - 1.0 + 1.0))
        if last < first:
            return 0, 0
        return first, last

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _max_steps(ni, nj, nk, step_voxels):
        """Most full steps a ray inside the box can take (the trilinear loops' bound), an int in [0, 2**31].

        The chord of a ray spans at most max(n) voxels along its dominant
        axis, so ``floor(chord / h) <= max(n) / step``. (A non-finite or
        non-positive step, refused before the kernels by `integrate`, gives
        some bound in [0, 2**31].)
        """
        cap = math.ceil(max(ni, nj, nk) / step_voxels) + 2
        return min(max(cap, 0), 2**31)

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _sample_ranges(s0, s1, s2, d0, d1, d2, ni, nj, nk, tn, h, whole):
        """`_inner_samples`, clamped to [0, whole] as integers, and the number of full steps.

        On normal rays this changes nothing (``0 <= first <= last <= whole``);
        on extreme or non-finite ones (a NaN ``whole``, whose conversion to an
        integer is arbitrary) it keeps every loop within ``whole`` steps.
        """
        steps = max(whole, 0)
        first, last = _inner_samples(s0, s1, s2, d0, d1, d2, ni, nj, nk, tn, h, whole)
        return min(max(first, 0), steps), min(max(last, 0), steps), steps

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _step_size(d0, d1, d2, step_voxels):
        """alpha per step and the index of the dominant direction component."""
        a0, a1, a2 = abs(d0), abs(d1), abs(d2)
        axis = 0
        big = a0
        if a1 > big:
            axis, big = 1, a1
        if a2 > big:
            axis, big = 2, a2
        return step_voxels / big, axis

    @njit(cache=CACHE, parallel=True, fastmath=True)
    def trilinear_forward(flat, ni, nj, nk, src, d, tn, tf, step_voxels, out):
        """out[n] = midpoint-rule integral of the flat (K, J, I) volume along ray n (alpha units)."""
        most = _max_steps(ni, nj, nk, step_voxels)
        for n in prange(src.shape[0]):
            s0, s1, s2 = src[n, 0], src[n, 1], src[n, 2]
            d0, d1, d2 = d[n, 0], d[n, 1], d[n, 2]
            h, _ = _step_size(d0, d1, d2, step_voxels)
            chord = tf[n] - tn[n]
            whole = min(math.floor(chord / h), most)  # integers (numba's floor is an int)
            rest = chord - whole * h
            nij = ni * nj
            first, last, steps = _sample_ranges(s0, s1, s2, d0, d1, d2, ni, nj, nk, tn[n], h, whole)
            acc = 0.0
            for k in range(first):
                a = tn[n] + (k + 0.5) * h
                acc += _value(flat, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2)
            for k in range(first, last):
                a = tn[n] + (k + 0.5) * h
                acc += _fast_value(flat, ni, nij, s0 + a * d0, s1 + a * d1, s2 + a * d2)
            for k in range(max(first, last), steps):
                a = tn[n] + (k + 0.5) * h
                acc += _value(flat, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2)
            a = tn[n] + whole * h + 0.5 * rest
            out[n] = acc * h + rest * _value(flat, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2)

    @njit(cache=CACHE, parallel=True, fastmath=True)
    def trilinear_with_gradient(flat, ni, nj, nk, src, d, tn, tf, step_voxels, out, partials):
        """`trilinear_forward` plus, per ray, d value / d (s0, s1, s2, d0, d1, d2, t_near, t_far) in ``partials`` (N, 8).

        One pass: the backward then only scales these by the upstream gradient.
        """
        most = _max_steps(ni, nj, nk, step_voxels)
        for n in prange(src.shape[0]):
            s0, s1, s2 = src[n, 0], src[n, 1], src[n, 2]
            d0, d1, d2 = d[n, 0], d[n, 1], d[n, 2]
            h, axis = _step_size(d0, d1, d2, step_voxels)
            chord = tf[n] - tn[n]
            whole = min(math.floor(chord / h), most)  # integers (numba's floor is an int)
            rest = chord - whole * h
            # raw sums over the full samples: V = sum f, S = sum grad f, D = sum alpha grad f
            acc = 0.0
            gs0 = gs1 = gs2 = 0.0
            gd0 = gd1 = gd2 = 0.0
            nij = ni * nj
            first, last, steps = _sample_ranges(s0, s1, s2, d0, d1, d2, ni, nj, nk, tn[n], h, whole)
            for k in range(first):
                a = tn[n] + (k + 0.5) * h
                v, fi, fj, fk = _trilinear(flat, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2)
                acc += v
                gs0 += fi
                gs1 += fj
                gs2 += fk
                gd0 += a * fi
                gd1 += a * fj
                gd2 += a * fk
            for k in range(first, last):
                a = tn[n] + (k + 0.5) * h
                v, fi, fj, fk = _fast_trilinear(flat, ni, nij, s0 + a * d0, s1 + a * d1, s2 + a * d2)
                acc += v
                gs0 += fi
                gs1 += fj
                gs2 += fk
                gd0 += a * fi
                gd1 += a * fj
                gd2 += a * fk
            for k in range(max(first, last), steps):
                a = tn[n] + (k + 0.5) * h
                v, fi, fj, fk = _trilinear(flat, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2)
                acc += v
                gs0 += fi
                gs1 += fj
                gs2 += fk
                gd0 += a * fi
                gd1 += a * fj
                gd2 += a * fk
            # d V_full / d alpha_k = h grad f_k . d and alpha_k = tn + (k + 1/2) h, so
            # d/d tn = h (d . S) and d/d h = V + d . D - tn (d . S)
            d_dot_s = d0 * gs0 + d1 * gs1 + d2 * gs2
            gtn = h * d_dot_s
            gh = acc + (d0 * gd0 + d1 * gd1 + d2 * gd2) - tn[n] * d_dot_s
            gs0 *= h
            gs1 *= h
            gs2 *= h
            gd0 *= h
            gd1 *= h
            gd2 *= h
            a = tn[n] + whole * h + 0.5 * rest
            v, fi, fj, fk = _trilinear(flat, ni, nj, nk, s0 + a * d0, s1 + a * d1, s2 + a * d2)
            slope = rest * (fi * d0 + fj * d1 + fk * d2)
            gs0 += rest * fi
            gs1 += rest * fj
            gs2 += rest * fk
            gd0 += rest * a * fi
            gd1 += rest * a * fj
            gd2 += rest * a * fk
            gtn += 0.5 * slope - v
            gtf = 0.5 * slope + v
            gh += 0.5 * whole * slope - whole * v
            # h = step / max|d|: d h / d d_a = -h / d_a for the dominant component, shared evenly between
            # tied components as the reference's amax does
            big = max(abs(d0), abs(d1), abs(d2))
            ties = (abs(d0) == big) + (abs(d1) == big) + (abs(d2) == big)
            share = gh * h / ties
            if abs(d0) == big:
                gd0 -= share / d0
            if abs(d1) == big:
                gd1 -= share / d1
            if abs(d2) == big:
                gd2 -= share / d2
            out[n] = acc * h + rest * v
            partials[n, 0] = gs0
            partials[n, 1] = gs1
            partials[n, 2] = gs2
            partials[n, 3] = gd0
            partials[n, 4] = gd1
            partials[n, 5] = gd2
            partials[n, 6] = gtn
            partials[n, 7] = gtf

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _siddon_setup(s, dd, tn, tf, n_axis, stride):
        """Per-axis Siddon state as the reference builds it: entry voxel, crossing count, first alpha, increment."""
        pin = s + tn * dd
        pout = s + tf * dd
        forward = dd > 0.0
        if forward:
            voxel = math.floor(pin + 0.5)
        else:
            voxel = math.ceil(pin + 0.5) - 1.0
        voxel = min(max(voxel, 0.0), n_axis - 1.0)
        lo = min(pin, pout)
        hi = max(pin, pout)
        count = max(math.ceil(hi + 0.5) - 1.0 - math.floor(lo + 0.5), 0.0)
        if abs(dd) < _TINY:  # parallel to this axis's planes: no crossings (as the reference)
            count = 0.0
        step = 1.0 if forward else -1.0
        safe = dd if abs(dd) >= _TINY else _TINY
        first = (voxel + 0.5 * step - s) / safe
        inc = step / safe
        delta = stride if forward else -stride
        # A ray inside the box crosses at most the n + 1 planes of the axis; clamping (after the conversion too,
        # which turns NaN or huge counts of extreme or non-finite rays into arbitrary integers) bounds the loop.
        crossings = min(max(int(min(count, n_axis + 1.0)), 0), n_axis + 1)
        return int(voxel), crossings, first, inc, delta, safe

    @njit(cache=CACHE, inline="always", fastmath=True)
    def _siddon_ray(flat_mu, src, d, tn, tf, ni, nj, nk, g, grads):
        """Integral of one ray; with ``grads`` (length 8) also its gradients times g (s0..2, d0..2, tn, tf)."""
        numel = flat_mu.shape[0]
        v0, c0, f0, i0, e0, q0 = _siddon_setup(src[0], d[0], tn, tf, ni, 1)
        v1, c1, f1, i1, e1, q1 = _siddon_setup(src[1], d[1], tn, tf, nj, ni)
        v2, c2, f2, i2, e2, q2 = _siddon_setup(src[2], d[2], tn, tf, nk, ni * nj)
        cur = v0 + v1 * ni + v2 * ni * nj
        k0 = k1 = k2 = 0
        prev = tn
        total = 0.0
        mu_cur = float(flat_mu[min(max(cur, 0), numel - 1)])
        if grads is not None:
            grads[6] -= g * mu_cur  # entry: weight 0 - mu_first
        # one crossing per pass: c0 + c1 + c2 passes at most (a while loop over the pending crossings never ended
        # when no pending alpha compared below 1e300, as NaN or infinite ones of a non-finite ray do)
        for _ in range(c0 + c1 + c2):
            # next crossing: the smallest pending alpha (the reference sorts them)
            best = 1e300
            axis = -1
            if k0 < c0:
                a = f0 + k0 * i0
                if a < best:
                    best, axis = a, 0
            if k1 < c1:
                a = f1 + k1 * i1
                if a < best:
                    best, axis = a, 1
            if k2 < c2:
                a = f2 + k2 * i2
                if a < best:
                    best, axis = a, 2
            if axis < 0:  # no pending crossing has a finite alpha (a non-finite ray): the value is not meaningful
                break
            # crossings stay within [t_near, t_far] (as the reference); a clamped one moves with that end
            clamped = 0
            alpha = best
            if best > tf:
                clamped, alpha = 2, tf
            elif best < tn:
                clamped, alpha = 1, tn
            total += (alpha - prev) * mu_cur
            if axis == 0:
                cur += e0
                k0 += 1
                safe = q0
            elif axis == 1:
                cur += e1
                k1 += 1
                safe = q1
            else:
                cur += e2
                k2 += 1
                safe = q2
            mu_next = float(flat_mu[min(max(cur, 0), numel - 1)])
            if grads is not None:
                w = g * (mu_cur - mu_next)
                if clamped == 2:
                    grads[7] += w
                elif clamped == 1:
                    grads[6] += w
                else:
                    grads[axis] -= w / safe
                    if abs(d[axis]) >= _TINY:
                        grads[3 + axis] -= w * alpha / safe
            mu_cur = mu_next
            prev = alpha
        total += (tf - prev) * mu_cur
        if grads is not None:
            grads[7] += g * mu_cur  # exit: weight mu_last - 0
        return total

    @njit(cache=CACHE, parallel=True, fastmath=True)
    def siddon_forward(flat_mu, ni, nj, nk, src, d, tn, tf, out):
        """out[n] = exact radiological path of ray n through the voxel grid (alpha units)."""
        for n in prange(src.shape[0]):
            out[n] = _siddon_ray(flat_mu, src[n], d[n], tn[n], tf[n], ni, nj, nk, 0.0, None)

    @njit(cache=CACHE, parallel=True, fastmath=True)
    def siddon_with_gradient(flat_mu, ni, nj, nk, src, d, tn, tf, out, partials):
        """`siddon_forward` plus, per ray, d value / d (s0, s1, s2, d0, d1, d2, t_near, t_far) in ``partials`` (N, 8)."""
        for n in prange(src.shape[0]):
            row = partials[n]
            row[:] = 0.0
            out[n] = _siddon_ray(flat_mu, src[n], d[n], tn[n], tf[n], ni, nj, nk, 1.0, row)


def _numpy64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)


class _FusedIntegral(torch.autograd.Function):
    """Line integrals (N,) of mu along rays (N, 3) + (N, 3) in [tn, tf]; gradients for the ray geometry only.

    When a gradient will be needed, the forward pass runs the kernel that also
    returns each ray's partial derivatives (8 numbers per ray); the backward
    pass only scales them by the upstream gradient.
    """

    @staticmethod
    def forward(ctx, mu, src, d, tn, tf, renderer: str, step_voxels: float):
        mu_np = np.ascontiguousarray(mu.detach().cpu().numpy())
        flat = mu_np.reshape(-1)
        nk, nj, ni = mu_np.shape
        s, dd, a, b = _numpy64(src), _numpy64(d), _numpy64(tn), _numpy64(tf)
        out = np.empty(s.shape[0], dtype=np.float64)
        wants_grad = any(t.requires_grad for t in (src, d, tn, tf))
        if wants_grad:
            partials = np.empty((s.shape[0], 8), dtype=np.float64)
            if renderer == "trilinear":
                trilinear_with_gradient(flat, ni, nj, nk, s, dd, a, b, float(step_voxels), out, partials)
            else:
                siddon_with_gradient(flat, ni, nj, nk, s, dd, a, b, out, partials)
            ctx.partials = torch.from_numpy(partials).to(src.device)
        elif renderer == "trilinear":
            trilinear_forward(flat, ni, nj, nk, s, dd, a, b, float(step_voxels), out)
        else:
            siddon_forward(flat, ni, nj, nk, s, dd, a, b, out)
        return torch.from_numpy(out).to(dtype=src.dtype, device=src.device)  # render() casts to mu's dtype

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        scaled = ctx.partials * grad_out.to(ctx.partials.dtype)[:, None]
        g_src, g_d, g_tn, g_tf = scaled[:, 0:3], scaled[:, 3:6], scaled[:, 6], scaled[:, 7]
        return (None, g_src, g_d, g_tn, g_tf, None, None)


def integrate(mu: torch.Tensor, rays, renderer: str = "siddon", step_voxels: float = 1.0) -> torch.Tensor:
    """Line integrals of mu (K, J, I) along a `RayBundle` -> (B, R), as the reference ``integrate`` functions.

    Differentiable w.r.t. the rays (hence pose and intrinsics); not w.r.t. mu
    (use the reference renderers for gradients w.r.t. the volume).
    """
    if not AVAILABLE:
        raise RuntimeError("the fused CPU renderer needs numba: pip install numba")
    if mu.requires_grad and torch.is_grad_enabled():
        raise ValueError("the fused CPU renderer has no gradient w.r.t. mu; use backend='reference'")
    if renderer == "trilinear" and not (isinstance(step_voxels, (int, float)) and 0 < step_voxels < math.inf):
        raise InputError(f"step_voxels must be a finite positive number of voxels, got {step_voxels!r}")
    b, r = rays.direction.shape[:2]
    value = _FusedIntegral.apply(mu, *rays.flat(), renderer, step_voxels)
    return value.reshape(b, r) * rays.length_mm


def set_threads(n: int) -> None:
    """Use ``n`` threads (at most numba's configured maximum) for the fused kernels."""
    if AVAILABLE:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
