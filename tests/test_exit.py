"""masked_opt's per-step uploads are freed by MXNet, never through Python: exiting is safe.

The regression: the pure row_sparse path (``SparseRows``) uploaded its per-step index arrays
with ``nd.from_numpy(zero_copy=True)``, whose NDArray frees the numpy buffer through a Python
callback (``mxnet.ndarray.ndarray.dl_managed_tensor_deleter``), run by whichever thread drops
the last reference. When that was an engine worker finishing an operator just as Python began
to finalize, the callback could not take the GIL, the worker was unwound through C++ and the
process aborted: "terminate called without an active exception", exit code 134, in about one
short training script in three (CI's install check among them).

``test_freeing_an_upload_runs_no_python`` checks the cause on the bits of the mechanism, and
deterministically; ``test_exit_while_an_operator_reads_an_upload`` checks the symptom: a process
that exits while the engine still holds an upload. The race's window is narrow (the operator
must finish within the first milliseconds of finalization), so it tries a few operator lengths;
on a 2-core machine the shortest hit it in every run with the old upload.
"""
import os
import subprocess
import sys
import textwrap
import threading
import time

import mxnet as mx
import numpy as np
import pytest
from mxnet.ndarray import ndarray as mx_ndarray

import masked_opt
from masked_opt.steps.sparse import _upload

_DELETERS = []   # ctypes callbacks must outlive every array that may still call them


def test_freeing_an_upload_runs_no_python(monkeypatch):
    calls = []
    original = mx_ndarray.dl_managed_tensor_deleter

    @mx_ndarray.DeleterFunc
    def recording_deleter(handle):
        calls.append(threading.get_ident())
        original(handle)

    _DELETERS.append(recording_deleter)
    monkeypatch.setattr(mx_ndarray, 'dl_managed_tensor_deleter', recording_deleter)
    big = mx.nd.ones((300, 300))
    ids = _upload(np.arange(300), mx.cpu(), np.int64)
    out = mx.nd.dot(big, big).take(ids)          # an operator that still holds the upload
    assert out.shape == (300, 300)
    assert (ids.asnumpy() == np.arange(300)).all()
    del ids, out
    mx.nd.waitall()
    # The worker drops an operator's inputs just after the operator completes, so a callback
    # may come a moment after waitall returns: give it a second.
    deadline = time.monotonic() + 1.0
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [], 'an upload was freed through a Python callback, on threads %s' % calls


SCRIPT = textwrap.dedent('''
    import sys
    import mxnet as mx
    import numpy as np
    from masked_opt.steps.sparse import _upload

    big = mx.nd.ones((1000, 1000))
    ids = _upload(np.arange(1000), mx.cpu(), np.int64)
    slow = big
    for _ in range(int(sys.argv[1])):       # 1000 x 1000 dots, about 50 ms each on one core
        slow = mx.nd.dot(slow, big)
    out = slow.take(ids)                    # reads the upload once the dots are done
    del ids, slow, out                      # the engine now holds the upload's last reference
    print('queued', flush=True)
    sys.exit(0)
''')


@pytest.mark.parametrize('dots', [1, 2, 3])
def test_exit_while_an_operator_reads_an_upload(dots, tmp_path):
    script = tmp_path / 'exit_while_queued.py'
    script.write_text(SCRIPT)
    # The masked_opt this test imported, wherever it is installed.
    here = os.path.dirname(os.path.dirname(os.path.abspath(masked_opt.__file__)))
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([here, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, str(script), str(dots)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert 'queued' in proc.stdout
    assert 'terminate called' not in proc.stderr
