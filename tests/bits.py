"""Bit-level comparison: frozen means the same bits, not 'close'; and the arrays compared."""
import mxnet as mx
import numpy as np

_INT_OF = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def as_bits(a):
    """View an NDArray or numpy array as unsigned integers of the same width."""
    a = a.asnumpy() if hasattr(a, 'asnumpy') else np.asarray(a)
    a = np.ascontiguousarray(a)
    return a.view(_INT_OF[a.dtype.itemsize])


def changed_bits(before, after):
    """Number of entries whose bits differ (NaN == NaN only when the bits are equal)."""
    return int(np.count_nonzero(as_bits(before) != as_bits(after)))


def assert_same_bits(before, after, what='array'):
    b, a = as_bits(before), as_bits(after)
    assert b.shape == a.shape, '%s: shape %s became %s' % (what, b.shape, a.shape)
    diff = np.count_nonzero(b != a)
    assert diff == 0, '%s: %d of %d entries changed bits' % (what, diff, b.size)


def state_arrays(state):
    """The NDArrays of a (possibly nested) optimizer state, in order."""
    if hasattr(state, 'asnumpy'):
        return [state]
    if isinstance(state, (list, tuple)):
        return [a for s in state for a in state_arrays(s)]
    return []


def map_state(fn, state):
    """Rebuild a nested state with ``fn`` applied to each NDArray."""
    if isinstance(state, mx.nd.NDArray):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, s) for s in state)
    return state


def rsp(ids, values, shape, dtype):
    """A row_sparse gradient with the given (sorted, unique) row ids."""
    ids = np.asarray(ids, dtype=np.int64)
    return mx.nd.sparse.row_sparse_array((np.asarray(values, dtype=dtype), ids), shape=shape,
                                         dtype=dtype)


def random_bits(seed, shape, dtype):
    """An array of `shape` with random bit patterns of `dtype`, and NaN, +-Inf, -0.0 sprinkled."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    uint = as_bits(np.zeros(1, dtype)).dtype
    a = rng.integers(0, np.iinfo(uint).max, size=shape, dtype=uint, endpoint=True).view(dtype)
    flat = a.reshape(-1)
    if flat.size:
        where = rng.choice(flat.size, size=min(4, flat.size), replace=False)
        flat[where] = np.array([np.nan, np.inf, -np.inf, -0.0], dtype)[:where.size]
    return a
