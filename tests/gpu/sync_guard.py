"""Catch every device-to-host synchronisation and record every operator an update runs.

MXNet's Python frontend reaches the engine through ``mxnet.base._LIB`` (ctypes). Every call
that blocks the Python thread until device work finishes goes through one of the C functions
in :data:`SYNC_CALLS` (``asnumpy``, ``asscalar``, ``wait_to_read``, ``waitall``,
``nd.array(numpy)``, ``x[...] = numpy``, sparse ``.data``/``.indices``, ``check_format``,
``mx.nd.save`` and pickling), and every imperative operator goes through
``MXImperativeInvokeEx``. :func:`guard` replaces them:
a sync raises :class:`HostSync`, an operator call is recorded by name. Dynamic-shape operators
(``boolean_mask``, ``np.unique``), which wait inside the engine instead, show up in the record.
"""
import contextlib
import ctypes

from mxnet.base import _LIB, c_str, check_call, py_str

SYNC_CALLS = ('MXNDArraySyncCopyToCPU', 'MXNDArraySyncCopyFromCPU', 'MXNDArrayWaitToRead',
              'MXNDArrayWaitToWrite', 'MXNDArrayWaitAll', 'MXNDArraySyncCopyFromNDArray',
              'MXNDArrayGetDataNDArray', 'MXNDArrayGetAuxNDArray', 'MXNDArraySyncCheckFormat',
              'MXNDArraySave', 'MXNDArraySaveRawBytes')


class HostSync(AssertionError):
    """Raised when the guarded code blocks on the device."""


def _op_names():
    """Operator handle -> canonical operator name (aliases share a handle)."""
    size, names = ctypes.c_uint(), ctypes.POINTER(ctypes.c_char_p)()
    check_call(_LIB.NNListAllOpNames(ctypes.byref(size), ctypes.byref(names)))
    by_handle = {}
    for i in range(size.value):
        name = py_str(names[i])
        handle = ctypes.c_void_p()
        check_call(_LIB.NNGetOpHandle(c_str(name), ctypes.byref(handle)))
        by_handle.setdefault(handle.value, set()).add(name)
    return by_handle


@contextlib.contextmanager
def guard(monkeypatch):
    """Within the block, a host sync raises :class:`HostSync`; yields the list of op names.

    Each recorded entry is the set of names (aliases included) of one operator call.
    """
    names, calls = _op_names(), []

    def refuse(call):
        def raiser(*args, **kwargs):
            raise HostSync('%s: a device-to-host sync inside the guarded update' % call)
        return raiser

    invoke = _LIB.MXImperativeInvokeEx

    def record(handle, *args):
        calls.append(frozenset(names.get(handle.value, {'<unknown op>'})))
        return invoke(handle, *args)

    with monkeypatch.context() as patch:
        for call in SYNC_CALLS:
            patch.setattr(_LIB, call, refuse(call))
        patch.setattr(_LIB, 'MXImperativeInvokeEx', record)
        yield calls
