"""The masked optimizer on a dist kvstore server: flat arrays, shards, and failing loudly.

With ``update_on_kvstore`` (the default for ``dist_*`` kvstores) every worker pickles the
optimizer and sends it to every server, which runs the updates. A server differs from a worker
in ways that make a naive mask silently wrong (``docs/howto/distributed.md`` has the user's
side):

- it knows keys, not names, and Gluon's ``param_dict`` does not survive pickling;
- its arrays are **flat** (``(80,)`` for a 20x4 table), and arrays with at least
  ``MXNET_KVSTORE_BIGARRAY_BOUND`` elements are **split across servers**: dense ones as flat
  element ranges that ignore row boundaries, row_sparse ones by rows with local row ids;
- exceptions raised inside its updater are printed and swallowed by ctypes, and a server
  without an updater copies the summed gradient into the weight; every process exits 0.

So on the worker, while the optimizer is pickled for the servers (:func:`capture`), the names,
full shapes and storage types of all parameters and the big-array bound go into the pickle,
and everything the server will need is checked there, where an exception reaches the user.
On the server (:class:`ServerSide`), each key's array is checked against the shape the worker
recorded (a shifted key order is caught by the sizes), and the mask is sliced to the part the
server holds. Anything that still fails on a server ends the server process with a message
and a non-zero exit code (:func:`loud_in_kvstore`), so the job stops instead of training on.
"""
import functools
import operator
import os
import sys
import traceback

import numpy as np

from ._mxnet_workarounds import (
    caller_params,
    in_kvstore_updater,
    pickling_for_servers,  # noqa: F401  (the optimizer asks here)
    server_rank,
)
from ._version import __version__
from .masks import as_mask, require_floating

__all__ = ['ServerSide', 'capture', 'is_split', 'part_range', 'row_part_range', 'element_scales',
           'loud_in_kvstore', 'DEFAULT_BIGARRAY_BOUND', 'EXIT_CODE', 'LOG_ENV']

#: MXNet's default for ``MXNET_KVSTORE_BIGARRAY_BOUND`` (read by the workers).
DEFAULT_BIGARRAY_BOUND = 1000000

#: Exit code of a server that stops because the masked optimizer cannot run there.
EXIT_CODE = 86

_ROLE = 'DMLC_ROLE'

#: Set this environment variable (to anything) on the servers to print, per key, which part of
#: which parameter the server holds and how many of its entries train.
LOG_ENV = 'MASKED_OPT_SERVER_LOG'


def _c_round(x):
    """C's ``round``/``llround`` for x >= 0: halves away from zero (Python's round is banker's)."""
    return int(np.floor(x + 0.5))


def is_split(size, bound, num_servers):
    """True when an array of ``size`` elements is split across the servers.

    Mirrors MXNet 1.9.1's ``src/kvstore/kvstore_dist.h``: ``EncodeDefaultKey`` sends an array
    with ``num_arr_elems < bigarray_bound_`` whole to one server and partitions every other
    one, and ``EncodeRowSparseKey`` partitions when ``total_num_rows * unit_len >=
    bigarray_bound_``. So an array of exactly ``MXNET_KVSTORE_BIGARRAY_BOUND`` elements *is*
    split. With one server the single "part" is the whole array.

    Examples
    --------
    >>> from masked_opt.server import is_split
    >>> [is_split(n, 100, 2) for n in (99, 100, 101)]
    [False, True, True]
    >>> is_split(100, 100, 1)
    False
    """
    return size >= bound and num_servers > 1


def part_range(size, num_servers, rank):
    """Element range ``[begin, end)`` of a split dense array held by server ``rank``.

    Mirrors ``KVStoreDist::EncodeDefaultKey`` (MXNet 1.9.1): the flat array is cut into
    ``num_servers`` parts at ``round(size / num_servers * i)``, with no regard for rows.

    Examples
    --------
    >>> from masked_opt.server import part_range
    >>> part_range(10, 2, 0), part_range(10, 2, 1)
    ((0, 5), (5, 10))
    >>> [part_range(7, 3, i) for i in range(3)]
    [(0, 2), (2, 5), (5, 7)]
    """
    return (_c_round(size / num_servers * rank), _c_round(size / num_servers * (rank + 1)))


def row_part_range(num_rows, num_servers, rank):
    """Row range ``[begin, end)`` of a split row_sparse array held by server ``rank``.

    Mirrors ``KVStoreDist::EncodeRowSparseKey`` (``llround(num_rows / num_servers * i)``).

    Examples
    --------
    >>> from masked_opt.server import row_part_range
    >>> [row_part_range(5, 2, i) for i in range(2)]
    [(0, 3), (3, 5)]
    """
    return (_c_round(num_rows / num_servers * rank),
            _c_round(num_rows / num_servers * (rank + 1)))


# ---------------------------------------------------------------- worker side: pickling

def capture(opt):
    """What a server needs, recorded and checked on the worker before the optimizer is sent.

    Parameters
    ----------
    opt : masked_opt.Masked
        The optimizer being pickled by ``KVStore.set_optimizer`` of a dist kvstore.

    Returns
    -------
    dict
        ``{'shapes': {name: (shape, stype)}, 'bound': int}``: plain tuples, ints and
        strings, safe for pickle protocol 0 decoded as UTF-8.

    Raises
    ------
    ValueError
        When a server could not apply a mask correctly: unknown shapes, a mask that does not
        fit its parameter, or ``Embedding(sparse_grad=True)`` (MXNet's server aborts on it).
    TypeError
        A mask on a parameter whose dtype is not floating-point.
    """
    params = {p.name: (tuple(p.shape), p._stype, p._grad_stype, p.dtype)
              for p in opt.base.param_dict.values()}
    if not params:
        params = {name: (tuple(p.shape), p.stype, p.grad_stype, p.dtype)
                  for name, p in caller_params(grad_stypes=True).items()}
    for name, (_, stype, grad_stype, _) in sorted(params.items()):
        if stype == 'default' and grad_stype == 'row_sparse':
            raise ValueError(
                "parameter '%s' has a dense weight and a row_sparse gradient (e.g. "
                "Embedding(sparse_grad=True)); MXNet 1.9.1's dist kvstore server aborts on its "
                "first push ('Check failed: size == to->Size()'), with or without masked_opt. "
                "Use mxnet.gluon.contrib.nn.SparseEmbedding (a row_sparse weight) or, with "
                "Module, mx.sym.contrib.SparseEmbedding, or sparse_grad=False." % name)
    names = sorted(set(opt.index_names.values()))
    missing = [n for n in names if n not in params]
    masked = [n for n in names if opt.mask_key_for(n) is not None]
    if masked and missing:
        raise ValueError(
            'the masked optimizer is being sent to dist kvstore servers, which see flat arrays '
            'only, but the full shapes of %s are unknown here. Use it through Module or '
            'gluon.Trainer, which provide them.' % missing)
    for name in masked:
        shape, _, _, dtype = params[name]
        require_floating(name, dtype)
        opt.masks[opt.mask_key_for(name)].resolve(shape, name)  # raises if it does not fit
    bound = os.environ.get('MXNET_KVSTORE_BIGARRAY_BOUND', str(DEFAULT_BIGARRAY_BOUND))
    try:
        bound = int(bound)
    except ValueError:
        raise ValueError('MXNET_KVSTORE_BIGARRAY_BOUND must be an integer, received %r'
                         % bound) from None
    return {'shapes': {n: (shape, stype) for n, (shape, stype, _, _) in params.items()},
            'bound': bound}


class _Exec:
    """Pickles as ``exec(code)``: runs ``code`` while the server unpickles, before our class."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class _Reduced:
    """Pickles as the given reduce value (the optimizer's own)."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return self.value


# Runs on the server before ``masked_opt`` is imported by the unpickler. If the package cannot
# be imported there, pickle.loads would raise inside MXNet's server controller, which ctypes
# swallows; the server would then train with no updater at all. Exit loudly instead.
_IMPORT_GUARD = '''
import os, sys
if os.environ.get('DMLC_ROLE') == 'server':
    try:
        import masked_opt
        _version = masked_opt.__version__
    except BaseException as exc:
        _version = None
        _reason = '%s: %s' % (type(exc).__name__, exc)
    else:
        _reason = 'it has version %s; the workers have %s' % (_version, {version!r})
    if _version != {version!r}:
        sys.stderr.write('masked_opt: this kvstore server cannot use the masked optimizer the '
                         'workers sent: masked_opt cannot be imported here (' + _reason + '). '
                         'Install masked_opt {version} in the Python environment of every '
                         'server (pip install masked_opt), or put it on their PYTHONPATH.\\n')
        sys.stderr.flush()
        os._exit({code})
'''


def reduce_for_servers(reduced):
    """Wrap the optimizer's reduce value so that a server checks ``masked_opt`` first.

    ``operator.getitem((exec(guard), optimizer), 1)``: the unpickler runs the guard before it
    imports the optimizer's class, and the result is the optimizer itself.
    """
    guard = _Exec(_IMPORT_GUARD.format(version=__version__, code=EXIT_CODE))
    return (operator.getitem, ((guard, _Reduced(reduced)), 1))


# ---------------------------------------------------------------- server side

def die(message):
    """Print ``message`` and end this process with :data:`EXIT_CODE`.

    ``os._exit`` because a Python exception here would be swallowed by ctypes.
    """
    sys.stderr.write('masked_opt: %s stops: %s\n' % (
        'kvstore server' if on_server() else 'process', message))
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def on_server():
    """True in a kvstore server process."""
    return os.environ.get(_ROLE) == 'server'


def loud_in_kvstore(fn):
    """Decorator: an exception that MXNet would swallow ends the process instead.

    On a kvstore server, or inside a kvstore updater callback on a worker (a ``'local'`` or
    ``'device'`` kvstore with ``update_on_kvstore``), the error is printed with what to fix and
    the process exits with :data:`EXIT_CODE`. Elsewhere the exception propagates unchanged.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if on_server() or in_kvstore_updater():
                die('the masked optimizer failed in %s inside MXNet\'s kvstore updater, which '
                    'would ignore the error and train on without this update:\n%s'
                    % (fn.__name__, traceback.format_exc()))
            raise
    return wrapper


def attach(opt, meta):
    """Called by ``Masked.__setstate__`` with what :func:`capture` recorded (``meta``, None when
    nothing was): on a server, return its :class:`ServerSide`, else None."""
    if not on_server():
        return None
    try:
        if meta is None:
            if opt.masks:
                die('the masked optimizer arrived without the parameter shapes that the '
                    'workers record when they send it (masked_opt.server.capture); it was not '
                    'sent by KVStore.set_optimizer of a dist kvstore on a worker.')
            return None
        num_servers = int(os.environ['DMLC_NUM_SERVER'])
        return ServerSide(meta, server_rank(), num_servers)
    except Exception:
        die('could not set up the masked optimizer:\n' + traceback.format_exc())


class ServerSide:
    """Per-key checks and mask slicing on one kvstore server.

    Parameters
    ----------
    meta : dict
        What :func:`capture` recorded on the worker.
    rank : int or None
        This server's rank (needed only for arrays split across servers).
    num_servers : int
        ``DMLC_NUM_SERVER``.

    Examples
    --------
    A 10x3 table split across 2 servers: server 1 holds flat elements 15..29, rows 5..9.

    >>> import mxnet as mx, masked_opt as mo
    >>> from masked_opt.server import ServerSide
    >>> opt = mo.Masked('sgd', masks={'w': mo.train_rows_from(6)}, param_idx2name={0: 'w'})
    >>> side = ServerSide({'shapes': {'w': ((10, 3), 'default')}, 'bound': 16}, 1, 2)
    >>> plan = side.plan(opt, 0, mx.nd.zeros((15,)))
    >>> plan.row_ids.tolist()   # local flat positions of rows 6..9
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    """

    def __init__(self, meta, rank, num_servers):
        self.shapes = {name: (tuple(shape), stype) for name, (shape, stype) in
                       meta['shapes'].items()}
        self.bound = int(meta['bound'])
        self.rank = rank
        self.num_servers = num_servers

    def _split(self, size):
        return is_split(size, self.bound, self.num_servers)

    def _need_rank(self, name):
        if self.rank is None:
            raise ValueError("parameter '%s' is split across %d servers, but this server could "
                             "not find its rank (no mxnet KVStoreServer on the call stack)"
                             % (name, self.num_servers))
        return self.rank

    def plan(self, opt, index, weight):
        """The plan for key ``index`` on this server: None (no mask) or a block plan."""
        names = opt.index_names
        name = names.get(index)
        if name is None:
            if not opt.masks:
                return None
            raise ValueError(
                'kvstore key %r has no parameter name (known keys: %s). The kvstore was used '
                'for other keys too, or its key order does not match the parameter order; '
                'give the masked optimizer its own kvstore.' % (index, sorted(names)))
        if name not in self.shapes:
            raise ValueError("no shape was recorded for parameter '%s' on the worker" % name)
        shape, stype = self.shapes[name]
        size = int(np.prod(shape))
        if stype == 'row_sparse':
            unit = size // shape[0]
            begin, end = (row_part_range(shape[0], self.num_servers, self._need_rank(name))
                          if self._split(size) else (0, shape[0]))
            expected = (end - begin, unit)
        else:
            begin, end = (part_range(size, self.num_servers, self._need_rank(name))
                          if self._split(size) else (0, size))
            expected = (end - begin,)
        if tuple(weight.shape) != expected:
            raise ValueError(
                "kvstore key %r should hold parameter '%s' of shape %s (%s), i.e. an array of "
                "shape %s on server %s of %d, but holds shape %s. The kvstore's key order does "
                "not match the parameter names (was another key initialised on this kvstore "
                "first?), or MXNET_KVSTORE_BIGARRAY_BOUND differs between workers (recorded: "
                "%d). Give the masked optimizer its own kvstore and the same environment on "
                "every worker." % (index, name, shape, stype, expected, self.rank,
                                   self.num_servers, tuple(weight.shape), self.bound))
        mask_key = opt.mask_key_for(name)
        rows, cols = (None, None) if mask_key is None else opt.masks[mask_key].resolve(shape,
                                                                                      name)
        if rows is None and cols is None:
            plan = None
        elif stype == 'row_sparse':
            # Rows [begin, end) of the table, with row ids local to this part.
            local = as_mask({'rows': None if rows is None else rows[begin:end], 'cols': cols},
                            name=repr(name))
            plan = opt.plan_from_mask(name, weight, local)
        else:
            plan = opt.build_plan(weight, element_scales(shape, rows, cols, begin, end), None)
        if os.environ.get(LOG_ENV):
            sys.stderr.write(
                "masked_opt server rank %s: key %r = '%s' %s %s, %s [%d, %d), %s\n" % (
                    self.rank, index, name, stype, shape,
                    'rows' if stype == 'row_sparse' else 'elements', begin, end,
                    'no mask' if plan is None else
                    'trainable block %s' % (getattr(plan, 'block_shape', '?'),)))
            sys.stderr.flush()
        return plan


def element_scales(shape, rows, cols, begin, end):
    """Scale of each flat element ``begin..end-1`` of a C-order array of ``shape``.

    Entry ``(i, j, ...)`` has scale ``rows[i] * cols[j]``; the range may start and end inside
    a row (dense shards are not row-aligned). Returns None when every scale is 1.

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.server import element_scales
    >>> element_scales((3, 2), np.array([0., 1., 1.]), np.array([1., 0.]), 1, 5).tolist()
    [0.0, 1.0, 0.0, 1.0]
    """
    row_len = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    first, last = begin // row_len, -(-end // row_len)
    scales = np.ones((last - first, row_len))
    if rows is not None:
        scales *= rows[first:last, None]
    if cols is not None:
        scales *= np.repeat(cols, row_len // shape[1])[None, :]
    scales = scales.ravel()[begin - first * row_len:end - first * row_len]
    return None if np.all(scales == 1.0) else scales
