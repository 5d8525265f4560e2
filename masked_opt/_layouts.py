"""Which rows and columns a block state covers, and a loaded state matched to the current mask.

A block state means something only with its layout: the rows and columns of the weight its
entries stand for (:class:`Layout`, saved next to the states in plain Python types). When
states are loaded under another mask, :func:`remap` keeps the state of every entry trainable
both then and now, starts newly trainable ones from a fresh state and drops the rest, or
raises ``ValueError`` naming the parameter when the state cannot be matched. Used by
:class:`masked_opt.states.MaskedUpdater`.

>>> import mxnet as mx
>>> from masked_opt._layouts import Layout, remap
>>> saved = Layout('w', (4, 2), [1, 2], None)        # a state of rows 1, 2 ...
>>> now = Layout('w', (4, 2), [2, 3], None)          # ... loaded where rows 2, 3 train
>>> state = remap('w', mx.nd.array([[1, 1], [2, 2]]), saved, mx.nd.zeros((2, 2)), now, (4, 2))
>>> state.asnumpy().tolist()                          # row 2 keeps its state, row 3 starts fresh
[[2.0, 2.0], [0.0, 0.0]]
"""
import numpy as np
from mxnet.ndarray import NDArray
from mxnet.ndarray import array as nd_array

__all__ = ['Layout', 'remap', 'is_whole']


class Layout:
    """Which rows and columns of a weight of ``shape`` a state covers (None: all of them)."""

    __slots__ = ('name', 'shape', 'rows', 'cols')

    def __init__(self, name, shape, rows, cols):
        self.name, self.shape = name, tuple(int(s) for s in shape)
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self.cols = None if cols is None else np.asarray(cols, np.int64)

    @property
    def full(self):
        return self.rows is None and self.cols is None

    def n_rows(self):
        return self.shape[0] if self.rows is None else self.rows.size

    def row_ids(self):
        return np.arange(self.shape[0]) if self.rows is None else self.rows

    def col_ids(self):
        return np.arange(self.shape[1]) if self.cols is None else self.cols

    def block_shape(self):
        if len(self.shape) < 2:
            return (self.n_rows(),)
        return (self.n_rows(), self.col_ids().size) + self.shape[2:]

    def __eq__(self, other):
        return (isinstance(other, Layout) and self.shape == other.shape
                and _same_ids(self.rows, other.rows) and _same_ids(self.cols, other.cols))

    def to_plain(self):
        """Plain Python types only: a state file must unpickle without masked_opt."""
        return {'name': self.name, 'shape': self.shape,
                'rows': _bitmap(self.rows, self.shape[0]),
                'cols': None if len(self.shape) < 2 else _bitmap(self.cols, self.shape[1])}

    @classmethod
    def from_plain(cls, plain):
        shape = tuple(plain['shape'])
        return cls(plain.get('name'), shape, _unbitmap(plain.get('rows'), shape[0]),
                   None if len(shape) < 2 else _unbitmap(plain.get('cols'), shape[1]))


def _same_ids(a, b):
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


def _bitmap(ids, n):
    if ids is None:
        return None
    bits = np.zeros(n, bool)
    bits[ids] = True
    return np.packbits(bits).tobytes()


def _unbitmap(data, n):
    if data is None:
        return None
    return np.flatnonzero(np.unpackbits(np.frombuffer(data, np.uint8), count=n))


# ---- matching one loaded state to the current mask ----

def _arrays(state):
    if isinstance(state, NDArray):
        return [state]
    if isinstance(state, (list, tuple)):
        return [a for s in state for a in _arrays(s)]
    return []


def _same_structure(a, b):
    if isinstance(a, NDArray) or isinstance(b, NDArray):
        return isinstance(a, NDArray) and isinstance(b, NDArray)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same_structure(x, y) for x, y in zip(a, b, strict=True)))
    return (a is None) == (b is None)


def is_whole(state, shape):
    """A state made for the whole weight: weight-shaped arrays, or one entry per row."""
    arrays = _arrays(state)
    return bool(arrays) and all(
        a.shape == tuple(shape) or (len(shape) > 1 and a.shape[0] == shape[0] and a.ndim == 2
                                    and a.shape[1] == 1)
        for a in arrays)


def remap(name, loaded, saved, fresh, now, shape):
    """The state for the current mask, from ``loaded`` (saved under layout ``saved``)."""
    if fresh is None:        # fully frozen now: no state at all
        return None
    if loaded is None or not _arrays(loaded):
        return fresh         # nothing was saved for it (frozen then, or a stateless optimizer)
    if not _same_structure(loaded, fresh):
        raise ValueError('parameter %r: the loaded optimizer state does not have the structure '
                         'the wrapped optimizer makes (%s); was it saved with another optimizer '
                         'or multi_precision setting? Load states saved with the same base '
                         'optimizer, or do not load optimizer states.'
                         % (name, _structure_of(fresh)))
    if saved is not None and saved.shape != tuple(shape):
        raise ValueError('parameter %r: the loaded optimizer state was saved for a weight of '
                         'shape %s; this weight has shape %s. Optimizer states cannot follow a '
                         'change of shape: do not load them after growing a table.'
                         % (name, saved.shape, tuple(shape)))
    if saved is None or saved.full:
        if is_whole(loaded, shape):
            # Made for the whole weight (an unmasked run): kept whole, updated through the block.
            return loaded
        if saved is None:
            if _shapes(loaded) == _shapes(fresh):
                return loaded   # no layout recorded: taken to be this mask's block
            raise ValueError(
                'parameter %r: the loaded optimizer state has shapes %s, which fit neither this '
                "mask's block %s nor the whole weight %s. It was saved under another mask by "
                'an updater that did not record which rows and columns it covers. Load it '
                'under the mask it was saved with, or do not load optimizer states.'
                % (name, _shapes(loaded), _shapes(fresh), tuple(shape)))
    if saved == now and _shapes(loaded) == _shapes(fresh):
        return loaded           # the same block: kept as it is, bit for bit
    return _zip_remap(name, loaded, fresh, saved, now)


def _zip_remap(name, loaded, fresh, saved, now):
    if isinstance(fresh, NDArray):
        return _remap_array(name, loaded, fresh, saved, now)
    if isinstance(fresh, (list, tuple)):
        return type(fresh)(_zip_remap(name, a, f, saved, now) for a, f in
                           zip(loaded, fresh, strict=True))
    return fresh


def _remap_array(name, a, f, saved, now):
    """Entries trainable under both layouts copied from ``a`` into a copy of ``f``."""
    if a.dtype != f.dtype:
        raise ValueError('parameter %r: a loaded state array has dtype %s, the wrapped optimizer '
                         'makes %s' % (name, np.dtype(a.dtype), np.dtype(f.dtype)))
    rows, pa, pb = np.intersect1d(saved.row_ids(), now.row_ids(), assume_unique=True,
                                  return_indices=True)
    out = f.asnumpy()
    src = a.asnumpy()
    if a.shape == saved.block_shape() and f.shape == now.block_shape() and len(saved.shape) > 1:
        _, ca, cb = np.intersect1d(saved.col_ids(), now.col_ids(), assume_unique=True,
                                   return_indices=True)
        if rows.size and ca.size:
            out[np.ix_(pb, cb)] = src[np.ix_(pa, ca)]
    elif (a.shape[:1] == (saved.n_rows(),) and f.shape[:1] == (now.n_rows(),)
          and a.shape[1:] == f.shape[1:]
          and (len(saved.shape) < 2 or np.array_equal(saved.col_ids(), now.col_ids()))):
        out[pb] = src[pa]     # one entry per row (or a 1-D weight): rows only
    else:
        raise ValueError('parameter %r: a loaded state array of shape %s does not fit the block '
                         '%s it was saved for, so it cannot be moved to the current mask'
                         % (name, a.shape, saved.block_shape()))
    return nd_array(out, ctx=f.context, dtype=f.dtype)


def _shapes(state):
    return [a.shape for a in _arrays(state)]


def _structure_of(state):
    if isinstance(state, NDArray):
        return 'array %s' % (state.shape,)
    if isinstance(state, (list, tuple)):
        return '%s of %d: [%s]' % (type(state).__name__, len(state),
                                   ', '.join(_structure_of(s) for s in state))
    return repr(state)
