"""A pickle payload that leaves a trace when it is unpickled, to prove a loader never unpickles.

An object array holding a :class:`Tripwire` pickles as a call of ``os.mkdir(marker)``: whoever
unpickles it creates the folder ``marker``. A loader that refuses the array *after* unpickling
it (checking the dtype of what came out, say) still leaves the folder behind; one that never
unpickles leaves nothing.
"""
import os

import numpy as np


class Tripwire:
    """Unpickles as ``os.mkdir(marker)``: the folder's existence records that it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def payload_array(marker):
    """An object array whose unpickling creates the folder ``marker``."""
    out = np.empty(1, dtype=object)
    out[0] = Tripwire(marker)
    return out


def assert_payload_is_live(npz_path, key, marker):
    """The control: unpickling ``key`` of ``npz_path`` does create ``marker`` (then removed),
    so a test that finds no marker after loading the file has shown that nothing unpickled."""
    assert not os.path.exists(marker)
    with np.load(npz_path, allow_pickle=True) as data:
        data[key]
    assert os.path.isdir(marker), 'the payload did not run when unpickled on purpose'
    os.rmdir(marker)
