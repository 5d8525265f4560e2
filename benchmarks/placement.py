"""Where an array sits in its memory page changes how fast MXNet's update runs over it.

``python -m benchmarks.placement [ROWS DIM]``

Times ``adam_update`` (weight, gradient, mean, variance, all ``(ROWS, DIM)`` float32) side by
side in interleaved rounds, once with the four arrays at the same offset within a 4 KiB page
and once at offsets the heap gave such arrays in a process without the pin (one of six
builds of these four arrays landed at weight 0x980, gradient 0xc0, states 0x40; that build
alone ran slow), and prints the ratio.
Nothing of masked_opt runs here: it is the reason the dense benchmarks pin the placement of
every array (:func:`benchmarks.harness.pin_array_placement`) before they build anything.

The arrays are views into one large MXNet array (basic slicing of a 1-D NDArray shares its
memory), so their offsets are chosen exactly and MXNet owns all the memory.
"""
import argparse
import ctypes

import mxnet as mx
from mxnet.base import _LIB, check_call

from .harness import interleaved, table

PAGE = 4096
LAYOUTS = {
    'same offset (0x40 each)': (0x40, 0x40, 0x40, 0x40),
    'heap offsets seen (0x980, 0xc0, 0x40, 0x40)': (0x980, 0xc0, 0x40, 0x40),
}


def data_address(array):
    """The address of an NDArray's first element.

    Examples
    --------
    >>> import mxnet as mx
    >>> from benchmarks.placement import data_address
    >>> a = mx.nd.zeros(16)
    >>> data_address(a[4:]) - data_address(a)
    16
    """
    ptr = ctypes.c_void_p()
    check_call(_LIB.MXNDArrayGetData(array.handle, ctypes.byref(ptr)))
    return ptr.value


def arrays_at(offsets, shape, pool):
    """float32 arrays of ``shape``, each starting ``offset`` bytes into a page of ``pool``.

    ``pool`` is a 1-D float32 NDArray large enough for all of them (see :func:`run`); the
    results are views into it.

    Examples
    --------
    >>> import mxnet as mx
    >>> from benchmarks.placement import arrays_at, data_address
    >>> pool = mx.nd.zeros(4 * 4096)
    >>> a, b = arrays_at((0x40, 0x980), (2, 8), pool)
    >>> data_address(a) % 4096, data_address(b) % 4096, a.shape
    (64, 2432, (2, 8))
    """
    size = shape[0] * shape[1]
    base = data_address(pool)
    out, start = [], 0
    for offset in offsets:
        # The first element at or after `start` whose address is `offset` into a page.
        address = base + start * 4
        skip = (offset - address) % PAGE
        first = start + skip // 4
        out.append(pool[first:first + size].reshape(shape))
        start = first + size
    return out


def run(rows=100_000, dim=64, rounds=7, min_seconds=1.0, log=None):
    """Seconds per ``adam_update`` in each layout of :data:`LAYOUTS`, timed interleaved.

    Examples
    --------
    >>> from benchmarks.placement import run
    >>> sorted(run(rows=64, dim=8, rounds=1, min_seconds=0.0))[0]
    'heap offsets seen (0x980, 0xc0, 0x40, 0x40)'
    """
    shape = (rows, dim)
    steps = {}
    for name, offsets in LAYOUTS.items():
        pool = mx.nd.zeros(len(offsets) * (rows * dim + PAGE))
        weight, grad, mean, var = arrays_at(offsets, shape, pool)
        weight[:] = mx.nd.random.uniform(-0.1, 0.1, shape=shape)
        grad[:] = mx.nd.random.uniform(-1e-3, 1e-3, shape=shape)

        def step(w=weight, g=grad, m=mean, v=var):
            mx.nd.adam_update(w, g, m, v, lr=1e-3, out=w)
        steps[name] = step
    res = interleaved(steps, rounds=rounds, min_seconds=min_seconds, log=log)
    return {name: r['median'] for name, r in res.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('rows', type=int, nargs='?', default=100_000)
    parser.add_argument('dim', type=int, nargs='?', default=64)
    args = parser.parse_args(argv)
    times = run(args.rows, args.dim)
    first = next(iter(times.values()))
    print('adam_update on (%d, %d) float32' % (args.rows, args.dim))
    print(table(['layout', 'ms per update', 'speed x same offset'],
                [[name, '%.2f' % (t * 1e3), '%.2f' % (first / t)] for name, t in times.items()]))


if __name__ == '__main__':
    main()
