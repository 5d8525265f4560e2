"""The in-place column update is used only after it gave MXNet's bits in this process.

masked_opt's operator ``masked_opt_dense_cols`` (``masked_opt/_native/dense_cols.cc``)
updates a block of a dense weight in place with the arithmetic of MXNet 1.9.1's SGD and Adam
kernels. Bit identity is not assumed: the first time a step could use the operator (and for
``masked-opt info``), :func:`check` runs every kernel it reproduces -- each dtype, with and
without weight decay, clipping (absent, positive, zero, negative), momentum -- on drawn inputs
(NaN with random payloads and signs, quiet and signalling, +-Inf, denormals, +-0, values over
twelve orders of magnitude; learning rates written with 1 to 17 digits, where MXNet's parser
and ``strtof`` disagree) through MXNet's own operators and through the in-place one, on a
block inside a larger table with block-sized and table-sized states, and compares every bit of
the weight (inside and outside the block) and of every state array.

On any differing bit, or with an MXNet other than 1.9.1 (whose kernels the operator copies;
1.9.1 is MXNet's last 1.x release), the in-place strategy is off for the process: one warning
on the ``'masked_opt'`` logger says why, :func:`status` and ``masked-opt info`` show it, and
dense latent splits take the pure dense path (the same bits, slower). The check runs once per
process (0.15-0.3 s measured on a 2-core machine under a load of 9).

>>> from masked_opt import inplace_check
>>> st = inplace_check.status()
>>> st.usable == (st.reason is None)
True
"""
import logging
import math
import threading
from collections import namedtuple

import mxnet as mx
import numpy as np
from mxnet import ndarray as nd

from . import native
from .kernel_calls import KERNELS, run_mxnet_kernel

__all__ = ['MXNET_VERSION', 'InPlaceStatus', 'check', 'status', 'draw_values', 'draw_case']

#: The MXNet release whose kernels the in-place operator reproduces.
MXNET_VERSION = '1.9.1'

InPlaceStatus = namedtuple('InPlaceStatus', 'usable reason cases')
InPlaceStatus.__doc__ = """Whether the in-place column update is used: ``usable``, ``reason``
(why not, with what to do; None when usable), ``cases`` (kernel cases compared with MXNet's
kernels in this process; 0 before the check ran)."""

_lock = threading.Lock()
_result = None    # (usable, reason, cases) once checked
_log = logging.getLogger('masked_opt')

_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
# (mantissa bits, exponent bits) per float width
_LAYOUT = {2: (10, 5), 4: (23, 8), 8: (52, 11)}


def draw_values(rng, shape, dtype):
    """Values for the check: normal ones over 12 orders of magnitude and every special kind.

    About half of the entries are special: NaN (random payload and sign, quiet or
    signalling), +-Inf, denormals, +-0.

    Examples
    --------
    >>> import numpy as np
    >>> v = draw_values(np.random.default_rng(0), (1000,), np.float32)
    >>> bool(np.isnan(v).any() and np.isinf(v).any() and (v == 0).any())
    True
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    x = (rng.standard_normal(size) * 10.0 ** rng.uniform(-6, 6, size)).astype(dtype)
    bits = x.view(_UINT[dtype.itemsize])
    width = 8 * dtype.itemsize
    mant, expo = _LAYOUT[dtype.itemsize]
    itype = _UINT[dtype.itemsize]
    kind = rng.integers(0, 9, size)
    sign = (rng.integers(0, 2, size).astype(np.uint64) << np.uint64(width - 1)).astype(itype)
    payload = rng.integers(1, 1 << mant, size, dtype=np.uint64).astype(itype)
    exp_all = itype(((1 << expo) - 1) << mant)
    quiet = itype(1 << (mant - 1))
    special = {
        0: exp_all | payload | quiet | sign,                          # quiet NaN
        1: exp_all | np.maximum(payload & ~quiet, 1).astype(itype) | sign,  # signalling NaN
        2: exp_all | sign,                                            # +-Inf
        3: payload | sign,                                            # denormal
        4: sign,                                                      # +-0
    }
    for k, value in special.items():
        bits[kind == k] = value[kind == k]
    return x.reshape(shape)


def _draw_float(rng, low, high):
    """A float written with 1 to 17 significant digits, between 10**low and 10**high."""
    digits = int(rng.integers(1, 18))
    return float('%.*g' % (digits, 10.0 ** rng.uniform(low, high)))


def draw_case(rng, kernel, variant):
    """Attribute strings for one case of ``kernel``; ``variant`` cycles clipping and wd.

    Examples
    --------
    >>> import numpy as np
    >>> a = draw_case(np.random.default_rng(0), 'adam', 1)
    >>> sorted(a)
    ['beta1', 'beta2', 'clip_gradient', 'epsilon', 'lr', 'rescale_grad', 'wd']
    """
    attrs = {'lr': str(_draw_float(rng, -6, 4)),
             'wd': '0.0' if variant % 2 == 0 else str(_draw_float(rng, -6, 0)),
             'rescale_grad': str(_draw_float(rng, -4, 1))}
    clip = variant % 4
    if clip == 1:
        attrs['clip_gradient'] = str(_draw_float(rng, -3, 2))
    elif clip == 2:
        attrs['clip_gradient'] = '0.0' if variant % 8 < 4 else '-1.5'
    if kernel.endswith('_mom'):
        attrs['momentum'] = str(float('%.6g' % rng.uniform(0.0, 1.0)))
    if kernel.endswith('adam'):
        attrs['beta1'] = str(float('%.6g' % rng.uniform(0.0, 1.0)))
        attrs['beta2'] = str(float('%.6g' % rng.uniform(0.0, 1.0)))
        attrs['epsilon'] = str(_draw_float(rng, -10, 0))
    return attrs


def _dtypes(kernel):
    return ('float16',) if KERNELS[kernel][2] else ('float16', 'float32', 'float64')


class _Pool:
    """Drawn values handed out in pieces: one :func:`draw_values` call per dtype and 64k
    values, instead of one per array (each call costs ~20 numpy operations)."""

    def __init__(self, rng):
        self._rng, self._left = rng, {}

    def draw(self, shape, dtype):
        n = math.prod(shape)
        left = self._left.get(dtype)
        if left is None or left.size < n:
            left = draw_values(self._rng, (max(n, 1 << 16),), dtype)
        self._left[dtype] = left[n:]
        return left[:n].reshape(shape).copy()


class _Uploads:
    """Numpy arrays uploaded in one copy per dtype; each comes back as a view of its copy.

    ``nd.array`` waits for MXNet's engine on every call (0.7 ms each here); the check needs
    ~1000 arrays, so they are packed.
    """

    def __init__(self):
        self._arrays = []

    def add(self, a):
        """Register ``a``; returns a handle for :meth:`get`."""
        self._arrays.append(np.ascontiguousarray(a))
        return len(self._arrays) - 1

    def upload(self):
        """Copy every registered array to MXNet, one flat array per dtype."""
        self._views = [None] * len(self._arrays)
        self._where = [None] * len(self._arrays)   # (flat array, offset)
        self._flats = []
        for dtype in {a.dtype for a in self._arrays}:
            ids = [i for i, a in enumerate(self._arrays) if a.dtype == dtype]
            flat = nd.array(np.concatenate([self._arrays[i].ravel() for i in ids]), dtype=dtype)
            self._flats.append(flat)
            at = 0
            for i in ids:
                a = self._arrays[i]
                self._views[i] = flat[at:at + a.size].reshape(a.shape)   # a view, no copy
                self._where[i] = (len(self._flats) - 1, at)
                at += a.size

    def get(self, handle):
        """The uploaded NDArray of a handle."""
        return self._views[handle]

    def download(self):
        """Copy every flat array back (one wait per dtype, after everything queued on them)."""
        self._host = [flat.asnumpy() for flat in self._flats]

    def result(self, handle):
        """A handle's array as it is after :meth:`download` (numpy)."""
        k, at = self._where[handle]
        a = self._arrays[handle]
        return self._host[k][at:at + a.size].reshape(a.shape)


class _Case:
    """One kernel case: drawn inputs, run through MXNet's kernel and the in-place operator."""

    shape, lo, hi, c0, c1 = (23, 9), 3, 18, 2, 7

    def __init__(self, kernel, dtype, attrs, pool, full_states, uploads):
        self.kernel, self.dtype, self.attrs, self.full = kernel, dtype, attrs, full_states
        names = KERNELS[kernel][1]
        state_dtype = 'float32' if KERNELS[kernel][2] else dtype
        w, g = pool.draw(self.shape, dtype), pool.draw(self.shape, dtype)
        s_shape = self.shape if full_states else (self.hi - self.lo, self.c1 - self.c0)
        self.states = [pool.draw(s_shape, state_dtype) for _ in names]
        self.w = w
        b = self.block = (slice(self.lo, self.hi), slice(self.c0, self.c1))
        up = uploads.add
        self.ref = [up(w[b]), up(g[b])] + [up(s[b] if full_states else s) for s in self.states]
        self.got = [up(w), up(g)] + [up(s) for s in self.states]

    def run(self, uploads):
        """Queue MXNet's kernel on the block's copies and the in-place operator on the table."""
        ref = [uploads.get(h) for h in self.ref]
        run_mxnet_kernel(self.kernel, self.attrs, ref[0], ref[1], ref[2:])
        got = [uploads.get(h) for h in self.got]
        native.dense_cols(got[0], got[1], got[2:], self.kernel, self.attrs, self.lo, self.hi,
                          self.c0, self.c1)

    def differences(self, uploads):
        """None when every bit matches, else what differs (after ``uploads.download()``)."""
        ref = [uploads.result(h) for h in self.ref]
        got = [uploads.result(h) for h in self.got]
        want_w = self.w.copy()
        want_w[self.block] = ref[0]
        pairs = [('weight', want_w, got[0])]
        for name, s, r, out in zip(KERNELS[self.kernel][1], self.states, ref[2:],
                                       got[2:], strict=True):
            want = s.copy()
            if self.full:
                want[self.block] = r
            else:
                want = r
            pairs.append((name, want, out))
        for name, want, out in pairs:
            itype = _UINT[want.dtype.itemsize]
            diff = int(np.count_nonzero(want.view(itype) != out.view(itype)))
            if diff:
                return ("masked_opt_dense_cols differs from MXNet %s's %s in %d of %d %s "
                        "entries (%s, %s)" % (mx.__version__, KERNELS[self.kernel][0], diff,
                                              want.size, name, self.dtype, ', '.join(
                                                  '%s=%s' % kv for kv in sorted(
                                                      self.attrs.items()))))
        return None


def _run_check():
    """(usable, reason, cases): the version check, then every kernel case (never raises)."""
    if mx.__version__ != MXNET_VERSION:
        return False, ('MXNet %s is installed; the in-place operator reproduces the kernels of '
                       'MXNet %s only' % (mx.__version__, MXNET_VERSION)), 0
    if not native.available():
        return False, 'the native library is not loaded: %s' % native.status().reason, 0
    rng = np.random.default_rng(20)   # fixed: every process checks the same cases
    uploads, pool = _Uploads(), _Pool(rng)
    cases = [_Case(kernel, dtype, draw_case(rng, kernel, variant), pool, variant % 3 == 2,
                   uploads)
             for kernel in KERNELS for dtype in _dtypes(kernel) for variant in range(8)]
    try:
        uploads.upload()
        for case in cases:
            case.run(uploads)
        uploads.download()
        for case in cases:
            why = case.differences(uploads)
            if why is not None:
                return False, why, len(cases)
    except Exception as e:   # an operator refused a case: not usable either
        return False, 'the self-check failed: %s' % str(e).strip().splitlines()[-1], len(cases)
    return True, None, len(cases)


def check():
    """Run the self-check once per process (later calls return its result); never raises.

    Returns
    -------
    bool
        Whether the in-place column update may be used.

    Examples
    --------
    >>> from masked_opt import inplace_check
    >>> inplace_check.check() in (True, False)
    True
    """
    global _result
    if _result is None:
        with _lock:
            if _result is None:
                result = _run_check()
                if not result[0] and native.available():
                    # One line; a missing library has its own (native.notify_fallback).
                    _log.warning('masked_opt: the in-place dense column update is off, dense '
                                 'latent splits take the pure path (same bits, slower): %s',
                                 result[1])
                _result = result
    return _result[0]


def status():
    """Whether the in-place column update is used, and why not.

    Runs :func:`check` if it has not run. With ``MASKED_OPT_NATIVE=0`` (or no library) it is
    not usable, for that reason.

    Returns
    -------
    InPlaceStatus

    Examples
    --------
    >>> from masked_opt import inplace_check
    >>> st = inplace_check.status()
    >>> st.usable in (True, False) and (st.cases > 0 or not st.usable)
    True
    """
    if not native.available():
        return InPlaceStatus(False, 'the native library is not used: %s'
                             % native.status().reason, 0)
    check()
    return InPlaceStatus(*_result)
