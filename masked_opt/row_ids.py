"""Row ids of a row_sparse gradient: sorted, unique and in range, or nothing is written.

MXNet's row_sparse format keeps a row's id once, in increasing order, inside ``[0, V)``
(``RowSparseNDArray.check_format`` calls anything else invalid), and every row_sparse kernel
relies on it. ``mx.nd.sparse.row_sparse_array`` does not check, and MXNet's optimizers accept
what it builds, so a gradient built by hand, by a custom operator or from user data can hold
ids like ``[6, 3, 5]``, ``[5, 5, 6]`` or ``[-1, 12]``. A masked parameter refuses such a
gradient on both of its row_sparse paths, before its weight or state is written:

pure path (:class:`~masked_opt.update.SparseStep`)
    reads the ids on the host anyway; :func:`check_row_ids` raises ``ValueError`` at the
    update call, naming the parameter. Every parameter's strategy is chosen, and so every
    gradient checked, before any parameter of the step is written.
native path (``masked_opt/_native/ops.cc``)
    never reads the ids on the host (that wait is what it saves). The operator that reads
    them on MXNet's engine checks them and fails before it writes; MXNet then skips every
    operation queued behind it (the optimizer's kernel, the write-back) and raises the
    operator's message, which names the parameter, as ``MXNetError`` at the next read of the
    weight, its state or anything computed from them (``asnumpy``, ``wait_to_read``,
    ``waitall``, the next batch's loss). The other parameters of the step are updated.
    The weight and state of the parameter keep their bits either way.

Refusing, not normalising: a repeated id has no single meaning (MXNet's kernels sum, take the
first or the last, depending on the operator), and sorting on the native path would cost a
pass per step for every well-formed gradient.

For example:

>>> import numpy as np
>>> check_row_ids(np.array([1, 4, 7]), 10, 'emb_weight')
>>> try:
...     check_row_ids(np.array([6, 3, 5]), 10, 'emb_weight')
... except ValueError as err:
...     print(str(err)[:95])
the row_sparse gradient of parameter 'emb_weight' is malformed: expected row ids sorted, unique
"""
import numpy as np

__all__ = ['check_row_ids']


def check_row_ids(ids, n_rows, name=None):
    """Raise ``ValueError`` unless ``ids`` are sorted, unique and in ``[0, n_rows)``.

    Parameters
    ----------
    ids : numpy.ndarray
        The row ids of a row_sparse gradient, on the host.
    n_rows : int
        Rows of the parameter.
    name : str, optional
        The parameter's name, for the message.

    Raises
    ------
    ValueError
        Saying which id is out of place, where, and how to build a well-formed gradient.
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= n_rows)
    bad[1:] |= ids[1:] <= ids[:-1]
    if not bad.any():
        return
    j = int(np.argmax(bad))
    after = '' if (j == 0 or ids[j] < 0 or ids[j] >= n_rows) else ' after id %d' % ids[j - 1]
    of = '' if name is None else ' of parameter %r' % (name,)
    raise ValueError(
        "the row_sparse gradient%s is malformed: expected row ids sorted, unique and in "
        "[0, %d) (MXNet's row_sparse format, see RowSparseNDArray.check_format), received id "
        "%d at position %d%s. Nothing was written. Build the array from sorted unique ids in "
        "range (numpy.unique(ids, return_inverse=True) and numpy.add.at sum the rows of "
        "repeated ids)." % (of, n_rows, ids[j], j, after))
