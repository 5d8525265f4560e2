"""One factor of a mask's scale along one axis, as the mask helpers make it.

:class:`AxisSpec` is the base: ``scales(length, where)`` gives the factor for an axis of a given
length, and ``to_plain(arrays)`` the plain form a mask file stores (:mod:`masked_opt.io`), with
its array put into ``arrays``. The specs pickle without raw bytes (see ``_encode_array``). The
classes keep the names they had in :mod:`masked_opt.masks`, which still holds them, so that
masks pickled before they moved here load.

>>> from masked_opt.masks import train_cols
>>> arrays = {}
>>> spec, = train_cols([1, 3]).cols
>>> spec.kind, spec.to_plain(arrays), arrays['a0'].tolist()
('indices', {'kind': 'indices', 'helper': 'train_cols', 'inside': 1.0, 'array': 'a0'}, [1, 3])
"""
import base64
import numbers

import numpy as np

__all__ = ['AxisSpec']


def _encode_array(arr):
    """Pickle-protocol-0-safe (ASCII) form of a numpy array.

    The dist kvstore sends the optimizer as ``pickle.dumps(opt, 0).decode('utf-8')``; a numpy
    array in the pickle holds raw bytes >= 0x80 and breaks that decode on the worker.
    """
    arr = np.ascontiguousarray(arr)
    return (arr.dtype.str, arr.shape, base64.b64encode(arr.tobytes()).decode('ascii'))


def _decode_array(encoded):
    dtype, shape, data = encoded
    return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()


class AxisSpec:
    """One factor of the scale along one axis. Subclasses implement :meth:`scales` and
    :meth:`to_plain`; ``kind`` names the plain form (``'from'``, ``'indices'``, ``'scales'``)."""

    kind = None
    _array_fields = ()

    def scales(self, length, where):
        """Return float64 scales of shape ``(length,)``; ``where`` names the axis in errors."""
        raise NotImplementedError

    def to_plain(self, arrays):
        """The spec as plain data (JSON types); its array, if any, goes into ``arrays`` under
        the next free key ``'a<n>'``, which the plain data names."""
        raise NotImplementedError

    def _array_key(self, arrays, values):
        key = 'a%d' % len(arrays)
        arrays[key] = values
        return key

    def __getstate__(self):
        state = dict(self.__dict__)
        for field in self._array_fields:
            state[field] = _encode_array(state[field])
        return state

    def __setstate__(self, state):
        for field in self._array_fields:
            state[field] = _decode_array(state[field])
        self.__dict__.update(state)

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in self.__dict__)

    __hash__ = None


class _From(AxisSpec):
    """Scale 1 from ``start`` to the end of the axis, 0 before it."""

    kind = 'from'

    def __init__(self, start):
        if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
            raise ValueError('train_rows_from expects a non-negative integer row number '
                             '(the number of old rows), received %r' % (start,))
        self.start = int(start)

    def scales(self, length, where):
        if self.start > length:
            raise ValueError('%s: train_rows_from(%d) starts past the end; expected a start '
                             'in [0, %d] for an axis of length %d. Did the table grow as '
                             'expected?' % (where, self.start, length, length))
        out = np.zeros(length)
        out[self.start:] = 1.0
        return out

    def to_plain(self, arrays):
        return {'kind': 'from', 'start': self.start}

    def __repr__(self):
        return 'from %d' % self.start


class _Indices(AxisSpec):
    """Scale ``inside`` at the given indices and ``1 - inside`` elsewhere."""

    kind = 'indices'
    _array_fields = ('indices',)

    def __init__(self, indices, inside, helper):
        arr = np.asarray(_to_numpy(indices))
        if arr.ndim != 1:
            raise ValueError('%s expects a 1-D list of indices, received an array of shape %s'
                             % (helper, arr.shape))
        if arr.size and not (np.issubdtype(arr.dtype, np.integer)
                             or (np.issubdtype(arr.dtype, np.floating)
                                 and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
            raise TypeError('%s expects integer indices, received %s values such as %r'
                            % (helper, arr.dtype, arr[:3].tolist()))
        arr = arr.astype(np.int64)
        if arr.size and arr.min() < 0:
            raise ValueError('%s expects non-negative indices, received %d. Negative indices '
                             'are not counted from the end here; pass the row number.'
                             % (helper, arr.min()))
        unique, counts = np.unique(arr, return_counts=True)
        if np.any(counts > 1):
            raise ValueError('%s expects each index once, received repeated indices %s'
                             % (helper, unique[counts > 1][:10].tolist()))
        self.indices = arr
        self.inside = float(inside)
        self.helper = helper

    def scales(self, length, where):
        if self.indices.size and self.indices.max() >= length:
            raise ValueError('%s: %s index %d is out of range; expected indices in [0, %d) '
                             'for an axis of length %d'
                             % (where, self.helper, self.indices.max(), length, length))
        out = np.full(length, 1.0 - self.inside)
        out[self.indices] = self.inside
        return out

    def to_plain(self, arrays):
        return {'kind': 'indices', 'helper': self.helper, 'inside': self.inside,
                'array': self._array_key(arrays, self.indices)}

    def __repr__(self):
        return '%s(%d indices)' % (self.helper, self.indices.size)


class _Scales(AxisSpec):
    """Explicit per-index scales in ``[0, 1]``."""

    kind = 'scales'
    _array_fields = ('values',)

    def __init__(self, values, helper):
        arr = np.asarray(_to_numpy(values))
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == np.bool_):
            raise TypeError('%s expects numbers in [0, 1], received %s' % (helper, arr.dtype))
        arr = arr.astype(np.float64)
        if arr.ndim != 1:
            raise ValueError('%s expects a 1-D array of scales, received shape %s'
                             % (helper, arr.shape))
        bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise ValueError('%s expects every scale in [0, 1], received %r at position %d '
                             '(%d bad values). Use 0 to freeze, 1 to train, a fraction to '
                             'slow an entry down.' % (helper, arr[i], i, int(bad.sum())))
        self.values = arr
        self.helper = helper

    def scales(self, length, where):
        if self.values.shape[0] != length:
            raise ValueError('%s: %s has %d values; expected %d (one per index of an axis of '
                             'length %d)' % (where, self.helper, self.values.shape[0],
                                             length, length))
        return self.values

    def to_plain(self, arrays):
        return {'kind': 'scales', 'helper': self.helper,
                'array': self._array_key(arrays, self.values)}

    def __repr__(self):
        return '%s(%d values)' % (self.helper, self.values.shape[0])


def _to_numpy(values):
    """Accept lists, tuples, numpy arrays and NDArrays (copied to the host once, here)."""
    if hasattr(values, 'asnumpy'):
        return values.asnumpy()
    return values
