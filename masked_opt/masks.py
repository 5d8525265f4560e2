"""Mask specifications: which entries of a parameter train, and how much.

A mask for a parameter of shape ``(V, D, ...)`` is a row scale ``r`` in ``[0, 1]^V`` and a
column scale ``c`` in ``[0, 1]^D``; entry ``(i, j)`` moves by ``r[i] * c[j]`` times the step the
wrapped optimizer would take. ``0`` freezes an entry bit-for-bit, ``1`` trains it as usual.

Masks are written as small English-like helpers (:func:`train_rows_from`, :func:`train_cols`,
...) combined with ``&``, or as plain data ``{'rows': ..., 'cols': ...}`` (see :func:`as_mask`)
so that they can come from a config file. A mask does not know its parameter's shape until the
optimizer first sees the weight; :meth:`Mask.resolve` then turns it into numpy scale vectors and
checks them against the shape.

Everything here is plain Python and numpy: masks are pickled with the optimizer (into kvstore
servers and Gluon state files), so they hold no NDArray and no Parameter.
"""
import numpy as np

# The axis specs are defined in _axis and kept importable here: masks pickled before they
# moved name them masked_opt.masks._From, ._Indices, ._Scales.
from ._axis import _From, _Indices, _Scales

__all__ = ['Mask', 'as_mask', 'train_rows_from', 'train_rows', 'freeze_rows', 'scale_rows',
           'train_cols', 'freeze_cols', 'scale_cols']


class Mask:
    """Which entries of one parameter train: a row scale times a column scale.

    Build masks with the helpers (:func:`train_rows_from`, :func:`train_cols`, ...) and
    combine them with ``&`` (scales multiply). ``Mask()`` trains everything.

    Parameters
    ----------
    rows : tuple of axis specs, optional
        Factors of the row scale; their product is the scale. Empty means all ones.
    cols : tuple of axis specs, optional
        Factors of the column scale (axis 1). Empty means all ones.

    Examples
    --------
    >>> import masked_opt as mo
    >>> m = mo.train_rows_from(3) & mo.train_cols([1])
    >>> rows, cols = m.resolve((5, 2), 'emb_weight')
    >>> rows.tolist(), cols.tolist()
    ([0.0, 0.0, 0.0, 1.0, 1.0], [0.0, 1.0])
    """

    def __init__(self, rows=(), cols=()):
        self.rows = tuple(rows)
        self.cols = tuple(cols)

    def __and__(self, other):
        if not isinstance(other, Mask):
            return NotImplemented
        return Mask(self.rows + other.rows, self.cols + other.cols)

    def __eq__(self, other):
        if not isinstance(other, Mask):
            return NotImplemented
        return self.rows == other.rows and self.cols == other.cols

    __hash__ = None

    @property
    def fractional(self):
        """True when a factor has scales strictly between 0 and 1 (:func:`scale_rows`, ...)."""
        return any(isinstance(s, _Scales) for s in self.rows + self.cols)

    def __repr__(self):
        parts = []
        if self.rows:
            parts.append('rows=' + ' & '.join(map(repr, self.rows)))
        if self.cols:
            parts.append('cols=' + ' & '.join(map(repr, self.cols)))
        return 'Mask(%s)' % ', '.join(parts)

    def resolve(self, shape, name):
        """Turn the mask into scale vectors for a parameter of the given shape.

        Parameters
        ----------
        shape : tuple of int
            The parameter's full shape.
        name : str
            The parameter's name, used in error messages.

        Returns
        -------
        rows : numpy.ndarray or None
            float64 scales of shape ``(shape[0],)``, or None when every row has scale 1.
        cols : numpy.ndarray or None
            float64 scales of shape ``(shape[1],)``, or None when every column has scale 1.

        Raises
        ------
        ValueError
            When the mask does not fit the shape (length, range, column mask on a 1-D
            parameter); the message names the parameter.

        Examples
        --------
        >>> import masked_opt as mo
        >>> mo.freeze_rows([0]).resolve((3, 4), 'w')[0].tolist()
        [0.0, 1.0, 1.0]
        """
        shape = tuple(shape)
        if len(shape) == 0:
            raise ValueError("parameter '%s': a mask needs a parameter with at least one axis, "
                             "received a scalar (shape ())" % name)
        if self.cols and len(shape) < 2:
            raise ValueError("parameter '%s' is 1-D (shape %s) and has no columns; expected a "
                             "row mask only, received a column mask %r. Drop 'cols'."
                             % (name, shape, self.cols))
        rows = _product(self.rows, shape[0], "parameter '%s' rows" % name)
        cols = _product(self.cols, shape[1], "parameter '%s' cols" % name) if self.cols else None
        if rows is not None and cols is not None:
            # Entry (i, j) trains when r[i] > 0 and c[j] > 0; its scale r[i] * c[j] must not
            # underflow to 0, or an entry meant to move would be neither frozen nor moved.
            smallest = rows[rows > 0].min(initial=1.0) * cols[cols > 0].min(initial=1.0)
            if smallest == 0.0:
                raise ValueError("parameter '%s': the smallest row scale times the smallest "
                                 "column scale underflows to 0; expected products > 0 for "
                                 "entries meant to train. Use 0 to freeze, or larger scales."
                                 % name)
        return rows, cols


def require_floating(name, dtype):
    """Refuse a mask on a parameter whose dtype is not floating-point.

    The wrapped optimizer's arithmetic (learning rate times a gradient, fractional scales) has
    no meaning on integers: MXNet's optimizers train float16, float32 and float64 weights. Called
    wherever a mask first meets its parameter's dtype, before anything is written: the first
    step, ``KVStore.set_optimizer`` (:mod:`masked_opt.validate`) and the pickling for dist
    kvstore servers (:func:`masked_opt.server.capture`).

    Raises
    ------
    TypeError
        Naming the parameter, its dtype, what a mask needs, and how to fix it.

    Examples
    --------
    >>> from masked_opt.masks import require_floating
    >>> require_floating('emb_weight', 'float16')
    >>> try:
    ...     require_floating('counts', 'int32')
    ... except TypeError as err:
    ...     print(err)   # doctest: +ELLIPSIS
    parameter 'counts' has dtype int32; a mask needs a floating-point weight (float16, ...
    """
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise TypeError("parameter %r has dtype %s; a mask needs a floating-point weight "
                        "(float16, float32 or float64). Remove its mask (an integer parameter "
                        "does not train by gradient), or narrow the glob pattern that matched it"
                        % (name, np.dtype(dtype)))


def _product(specs, length, where):
    if not specs:
        return None
    out = np.ones(length)
    for spec in specs:
        out = out * spec.scales(length, where)
    if np.all(out == 1.0):
        return None
    return out


def train_rows_from(n_old):
    """Train only rows ``n_old, n_old + 1, ...``: the new rows of a grown table.

    Parameters
    ----------
    n_old : int
        How many leading rows stay frozen (the size of the vocabulary before it grew).

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.train_rows_from(2).resolve((4, 3), 'w')[0].tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    return Mask(rows=(_From(n_old),))


def train_rows(indices):
    """Train only the given rows; every other row is frozen.

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.train_rows([0, 3]).resolve((4, 3), 'w')[0].tolist()
    [1.0, 0.0, 0.0, 1.0]
    """
    return Mask(rows=(_Indices(indices, 1.0, 'train_rows'),))


def freeze_rows(indices):
    """Freeze the given rows; every other row trains.

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.freeze_rows([1]).resolve((3, 2), 'w')[0].tolist()
    [1.0, 0.0, 1.0]
    """
    return Mask(rows=(_Indices(indices, 0.0, 'freeze_rows'),))


def scale_rows(values):
    """Per-row scale in ``[0, 1]``: row ``i`` moves by ``values[i]`` times the usual step.

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.scale_rows([0, 0.5, 1]).resolve((3, 2), 'w')[0].tolist()
    [0.0, 0.5, 1.0]
    """
    return Mask(rows=(_Scales(values, 'scale_rows'),))


def train_cols(indices):
    """Train only the given columns (latent dimensions); every other column is frozen.

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.train_cols([7]).resolve((2, 8), 'w')[1].tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    """
    return Mask(cols=(_Indices(indices, 1.0, 'train_cols'),))


def freeze_cols(indices):
    """Freeze the given columns; every other column trains.

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.freeze_cols([0]).resolve((2, 3), 'w')[1].tolist()
    [0.0, 1.0, 1.0]
    """
    return Mask(cols=(_Indices(indices, 0.0, 'freeze_cols'),))


def scale_cols(values):
    """Per-column scale in ``[0, 1]``.

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.scale_cols([1, 0.25]).resolve((2, 2), 'w')[1].tolist()
    [1.0, 0.25]
    """
    return Mask(cols=(_Scales(values, 'scale_cols'),))


def as_mask(value, name='mask'):
    """Convert a mask given as a :class:`Mask` or as plain data into a :class:`Mask`.

    Parameters
    ----------
    value : Mask or dict
        A :class:`Mask`, or ``{'rows': scales or None, 'cols': scales or None}`` where scales
        are array_like (list, numpy array or NDArray) of numbers in ``[0, 1]``.
    name : str
        What the mask belongs to, for error messages.

    Examples
    --------
    >>> import masked_opt as mo
    >>> mo.as_mask({'rows': [0, 1, 1], 'cols': None}) == mo.scale_rows([0, 1, 1])
    True
    """
    if isinstance(value, Mask):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {'rows', 'cols'}
        if unknown:
            raise ValueError("mask for %s: expected keys 'rows' and/or 'cols', received "
                             "unknown keys %s" % (name, sorted(unknown)))
        mask = Mask()
        try:
            if value.get('rows') is not None:
                mask = mask & scale_rows(value['rows'])
            if value.get('cols') is not None:
                mask = mask & scale_cols(value['cols'])
        except (TypeError, ValueError) as err:
            # scale_rows/scale_cols do not know the parameter; a config entry does: name it.
            raise type(err)('mask for %s: %s' % (name, err)) from None
        return mask
    raise TypeError("mask for %s: expected a masked_opt.Mask (e.g. mo.train_rows_from(n_old)) "
                    "or a dict {'rows': ..., 'cols': ...}, received %s"
                    % (name, type(value).__name__))
