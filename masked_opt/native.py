"""Optional native operators for the sparse path: find, check and load them, once.

``pip install .`` compiles ``masked_opt/_native/*.cc`` into ``libmasked_opt_ops.so`` when a
C++ compiler is there (see setup.py). The library adds three MXNet CPU operators for the sparse
path, run on MXNet's engine like any other, so a row_sparse gradient's row ids are never read
on the host:

* ``mx.nd.masked_opt_rsp_block(grad, lo=, hi=, c0=, c1=)``: rows ``[lo, hi)`` (ids shifted by
  ``-lo``) and columns ``[c0, c1)`` of a row_sparse ``grad``, as a row_sparse array;
* ``mx.nd.masked_opt_rsp_block_gather(grad, weight, scratch, lo=, hi=, c0=, c1=)``: the same,
  and the weight's block at those rows copied into ``scratch`` (in place), in one operation;
* ``mx.nd.masked_opt_scatter_rows(weight, block, gblock, c0=, out=weight)``: writes
  ``block[r]`` into ``weight[r, c0:c0+k]`` for every row id ``r`` of ``gblock``, in place;

each checks what it is given (shapes, dtypes, ranges at the call; row ids, which must be
sorted, unique and in range, on the engine, before it writes: see :mod:`masked_opt.row_ids`)
and takes an optional ``param=`` string, the parameter's name for its error messages;

one for dense gradients (``masked_opt/_native/dense_cols.cc``):

* ``mx.nd.masked_opt_dense_cols(weight, grad, *states, kernel=, lo=, hi=, c0=, c1=, ...,
  out=weight)``: one SGD or Adam step on the block ``[lo, hi) x [c0, c1)`` of a dense weight
  and its state, in place, with the arithmetic of MXNet's own kernel (see
  :mod:`masked_opt.inplace_check` for how that is checked);

and an embedding lookup (``masked_opt/_native/lookup.cc``):

* ``mx.nd.masked_opt_lookup(ids, weight, input_dim=, output_dim=)``: MXNet's ``Embedding`` with
  an O(batch) row_sparse backward (see :mod:`masked_opt.convert`).

The library is looked for in this order: ``$MASKED_OPT_NATIVE_LIB`` (an explicit path, the only
one tried when set), next to this module (``masked_opt/_native/``, a checkout or editable
install), then in every installed ``masked_opt`` distribution on ``sys.path`` (a checkout's
tests import the checkout while ``pip install .`` put the library in site-packages). The first
file whose ``masked_opt_ops_abi()`` equals :data:`ABI` is loaded with ``mx.library.load``.
``MASKED_OPT_NATIVE=0`` switches the native path off (read at every call). For example:

>>> from masked_opt import native
>>> st = native.status()
>>> st.loaded == (st.enabled and native.available())
True
>>> import mxnet as mx, numpy as np
>>> g = mx.nd.sparse.row_sparse_array((np.ones((2, 4), 'float32'), [1, 5]), shape=(8, 4))
>>> b = native.rsp_block(g, lo=4, hi=8, c0=1, c1=3) if native.available() else None
>>> (b.shape, b.indices.asnumpy().tolist()) if b is not None else ((4, 2), [1])
((4, 2), [1])
"""
import ctypes
import importlib.metadata
import logging
import os
import sys
import threading
from collections import namedtuple

import mxnet as mx

__all__ = ['ABI', 'LIB_NAME', 'LOOKUP_OP', 'Status', 'available', 'status', 'notify_fallback',
           'rsp_block', 'rsp_block_gather', 'scatter_rows', 'dense_cols']

#: ABI version this module expects; ``masked_opt_ops_abi()`` in ops.cc must return it.
ABI = 7
#: File name of the library inside the package directory ``masked_opt/_native/``.
LIB_NAME = 'libmasked_opt_ops.so'
#: The embedding lookup's operator name (``mx.nd.masked_opt_lookup``; see masked_opt.convert).
LOOKUP_OP = 'masked_opt_lookup'
OPS = ('masked_opt_rsp_block', 'masked_opt_rsp_block_gather', 'masked_opt_scatter_rows',
       'masked_opt_dense_cols', LOOKUP_OP)

REBUILD = ('install a C++ compiler (g++) and reinstall masked_opt from its source with '
           '`pip install --force-reinstall --no-deps .`')

Status = namedtuple('Status', 'enabled loaded path reason')
Status.__doc__ = """State of the native path: ``enabled`` (``MASKED_OPT_NATIVE`` is not ``0``),
``loaded`` (the operators are registered and used), ``path`` (the library loaded, or the last
one tried), ``reason`` (why not loaded and how to get the fast path; None when loaded)."""

_lock = threading.Lock()
_tried = None    # None until the first load attempt: then (loaded, path, reason)
_notified = False
_log = logging.getLogger('masked_opt')


def _enabled():
    return os.environ.get('MASKED_OPT_NATIVE', '1').strip() != '0'


def _candidates():
    """Paths to try, in order, and whether they came from $MASKED_OPT_NATIVE_LIB."""
    explicit = os.environ.get('MASKED_OPT_NATIVE_LIB')
    if explicit:
        return [os.path.abspath(explicit)], True
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_native', LIB_NAME)
    paths = [here]
    try:
        # Every installed copy on sys.path, not only the first: a checkout that pip built in
        # place carries its own masked_opt.egg-info, which comes first when the checkout is on
        # sys.path (pytest's pythonpath) and points back at the checkout.
        for dist in importlib.metadata.distributions(name='masked_opt'):
            installed = os.path.abspath(str(dist.locate_file('masked_opt/_native/' + LIB_NAME)))
            if installed not in paths:
                paths.append(installed)
    except Exception:  # broken metadata: only the checkout's copy
        pass
    return paths, False


def _check(path):
    """None if `path` is a library of this ABI, else why not."""
    if not os.path.isfile(path):
        return 'no file %s' % path
    try:
        abi = ctypes.CDLL(path).masked_opt_ops_abi
    except OSError as e:
        return 'cannot load %s: %s' % (path, e)
    except AttributeError:
        return '%s exports no masked_opt_ops_abi(): not a masked_opt library' % path
    abi.restype = ctypes.c_int
    found = abi()
    if found != ABI:
        return '%s has ABI %d, this masked_opt needs %d (a stale build)' % (path, found, ABI)
    return None


def _library_load(path):
    """``mx.library.load(path)``, keeping every name MXNet already had.

    The load regenerates the Python function of every operator, in every ``mxnet.*`` module;
    the old objects are put back, so only the new operators' names are added (a monkeypatched
    ``mx.nd.*`` function stays patched, ``mx.nd.sgd_update`` stays the same object).
    """
    before = [(m, dict(vars(m))) for name, m in list(sys.modules.items())
              if name.startswith('mxnet') and hasattr(m, '__dict__')]
    try:
        mx.library.load(path, verbose=False)
    finally:
        for module, names in before:
            now = vars(module)
            for key, value in names.items():
                if now.get(key, value) is not value:
                    setattr(module, key, value)


def _load():
    """Find, check and load the library; returns (loaded, path, reason). Never raises."""
    paths, explicit = _candidates()
    reasons = []
    for path in paths:
        why = _check(path)
        if why is None:
            try:
                _library_load(path)
                missing = [op for op in OPS if not hasattr(mx.nd, op)]
                if missing:
                    raise RuntimeError('operators %s not registered' % ', '.join(missing))
                return True, path, None
            except Exception as e:  # an MXNetError from MXLoadLib, mostly
                why = 'mx.library.load(%s) failed: %s' % (path, str(e).strip().splitlines()[-1])
        reasons.append(why)
    if explicit:
        how = 'fix or unset MASKED_OPT_NATIVE_LIB'
    elif all(r.startswith('no file') for r in reasons):
        how = ('masked_opt was installed without its native library (no C++ compiler at '
               'install time?): ' + REBUILD)
    else:
        how = REBUILD
    return False, paths[-1], '; '.join(reasons) + '. For the fast path: ' + how


def available():
    """Whether the native operators can be used now.

    Loads the library on the first call of the process (later calls only read the
    environment). ``False`` when ``MASKED_OPT_NATIVE=0`` is set or the library is missing,
    stale or fails to load; see :func:`status` for the reason. Never raises.

    Returns
    -------
    bool

    Examples
    --------
    >>> from masked_opt import native
    >>> native.available() in (True, False)
    True
    """
    global _tried
    if not _enabled():
        return False
    if _tried is None:
        with _lock:
            if _tried is None:
                try:
                    _tried = _load()
                except Exception as e:  # pragma: no cover - _load catches what it expects
                    _tried = (False, None, 'native library check failed: %r' % (e,))
    return _tried[0]


def status():
    """The state of the native path, with the reason when it is not used.

    Returns
    -------
    Status
        ``(enabled, loaded, path, reason)``; see :class:`Status`.

    Examples
    --------
    >>> from masked_opt import native
    >>> st = native.status()
    >>> st.reason is None if st.loaded else isinstance(st.reason, str)
    True
    """
    if not _enabled():
        path = _tried[1] if _tried else None
        return Status(False, False, path, 'MASKED_OPT_NATIVE=0 in the environment switches the '
                      'native ops off; unset it (or set it to 1) for the fast path')
    available()
    loaded, path, reason = _tried
    return Status(True, loaded, path, reason)


def notify_fallback():
    """Log, once per process, that the pure path is used instead of the native one, and why.

    For the optimizer to call the first time it would have used the native operators. Logs
    one warning on the ``'masked_opt'`` logger; later calls (and calls while the native
    path is available) log nothing.

    Returns
    -------
    bool
        Whether this call logged.
    """
    global _notified
    st = status()
    if st.loaded or _notified:
        return False
    _notified = True
    _log.warning('masked_opt: native sparse ops not used, the pure MXNet path runs instead '
                 '(slower, same bits): %s', st.reason)
    return True


def _op(name):
    if not available():
        raise RuntimeError('masked_opt native ops unavailable: %s' % status().reason)
    return getattr(mx.nd, name)


def _named(param):
    """The optional ``param`` attribute: the parameter's name, for the ops' error messages."""
    return {} if param is None else {'param': str(param)}


def rsp_block(grad, lo, hi, c0, c1, param=None):
    """Rows ``[lo, hi)`` and columns ``[c0, c1)`` of a row_sparse (V, D) `grad`, bit for bit.

    Returns a row_sparse ``(hi - lo, c1 - c0)`` NDArray whose row ids are grad's ids in
    ``[lo, hi)`` minus `lo`, in order (possibly none). Asynchronous: nothing is read on the host.
    Bad ranges, shapes or dtypes raise ``MXNetError`` at the call. Row ids that are not sorted,
    unique and in ``[0, V)`` make the operation fail on the engine before it writes: the error
    (naming `param`, the parameter, when given) is raised at the next read of the result or of
    anything computed from it (see :mod:`masked_opt.row_ids`).
    """
    return _op('masked_opt_rsp_block')(grad, lo=int(lo), hi=int(hi), c0=int(c0), c1=int(c1),
                                       **_named(param))


def rsp_block_gather(grad, weight, scratch, lo, hi, c0, c1, param=None):
    """:func:`rsp_block` and the weight's block at the same rows, in one engine operation.

    Returns what ``rsp_block(grad, lo, hi, c0, c1)`` returns, and writes, for each of its row
    ids ``r``, ``weight[lo + r, c0:c1]`` into ``scratch[r]`` (dense ``(hi - lo, c1 - c0)``,
    modified in place; its other rows are left as they were). `weight` is dense ``(V, D)``.
    Errors as :func:`rsp_block`; `scratch` is not written when the ids are refused.
    """
    return _op('masked_opt_rsp_block_gather')(grad, weight, scratch, lo=int(lo), hi=int(hi),
                                              c0=int(c0), c1=int(c1), **_named(param))


def scatter_rows(weight, block, gblock, c0, param=None):
    """Write ``block[r]`` into ``weight[r, c0:c0+k]`` for each row id ``r`` of `gblock`, in place.

    `weight` dense ``(R, D)`` (an axis-0 slice ``big[lo:hi]`` writes into ``big``), `block`
    dense ``(R, k)``, `gblock` row_sparse ``(R, k)``. Every other entry of `weight` keeps its
    bits. Returns `weight`; the write is queued on MXNet's engine like any update. Row ids of
    `gblock` outside ``[0, R)``, or not sorted and unique, fail as in :func:`rsp_block` and
    leave `weight` as it was.
    """
    return _op('masked_opt_scatter_rows')(weight, block, gblock, c0=int(c0), out=weight,
                                          **_named(param))


def dense_cols(weight, grad, states, kernel, attrs, lo, hi, c0, c1):
    """One step of ``kernel`` on the block ``[lo, hi) x [c0, c1)`` of `weight`, in place.

    `weight` and `grad` are dense ``(V, D)``; `states` the kernel's state arrays (in the order
    of :data:`masked_opt.kernel_calls.KERNELS`), each of the block's shape ``(hi - lo,
    c1 - c0)`` or of the weight's (then updated at the block only). `attrs` are the kernel's
    attribute strings (:func:`masked_opt.kernel_calls.dense_kernel_call`). Every entry
    outside the block keeps its bits. Returns `weight`; queued on MXNet's engine.
    """
    return _op('masked_opt_dense_cols')(weight, grad, *states, out=weight, kernel=kernel,
                                        lo=int(lo), hi=int(hi), c0=int(c0), c1=int(c1),
                                        **attrs)
