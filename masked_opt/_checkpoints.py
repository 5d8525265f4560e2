"""Checkpoints that are never loaded half-written: the second half of :mod:`masked_opt.io`.

Its public functions are documented in, and imported from, :mod:`masked_opt.io`.

>>> from masked_opt.io import latest_checkpoint
>>> latest_checkpoint('/no/such/prefix') is None
True
"""
import contextlib
import glob
import os
import re

__all__ = ['atomic_write', 'save_module_checkpoint', 'save_gluon_checkpoint',
           'latest_checkpoint']


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary file name; on success, move it over ``path`` in one step.

    The temporary file is in the same folder (a rename across file systems is not atomic) and
    is flushed to disk before the rename. On an exception it is removed and ``path`` is left
    as it was; after a crash (SIGKILL, power loss) ``path`` is either the old or the new file,
    never a partial one.

    Examples
    --------
    >>> import os, tempfile
    >>> from masked_opt.io import atomic_write
    >>> path = os.path.join(tempfile.mkdtemp(), 'x.txt')
    >>> with atomic_write(path) as tmp:
    ...     with open(tmp, 'w') as f:
    ...         _ = f.write('complete')
    >>> open(path).read()
    'complete'
    """
    path = os.path.abspath(path)
    tmp = '%s.tmp-%d' % (path, os.getpid())
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_module_checkpoint(mod, prefix, epoch):
    """``mod.save_checkpoint(prefix, epoch, save_optimizer_states=True)``, crash-safe.

    Writes ``prefix-symbol.json``, ``prefix-EPOCH.states`` and then ``prefix-EPOCH.params``,
    each atomically; load with ``mx.mod.Module.load(prefix, latest_checkpoint(prefix),
    load_optimizer_states=True, ...)``.

    Module saves the optimizer *states* but not the optimizer's update counts; to resume an
    optimizer whose step depends on the count (Adam's bias correction, a learning-rate
    schedule) pass ``begin_num_update=<updates done>`` in the optimizer parameters.

    Examples
    --------
    >>> import os, tempfile
    >>> import mxnet as mx
    >>> from masked_opt.io import save_module_checkpoint, latest_checkpoint
    >>> data = mx.sym.Variable('data')
    >>> out = mx.sym.LinearRegressionOutput(mx.sym.FullyConnected(data, num_hidden=1), name='y')
    >>> mod = mx.mod.Module(out, label_names=['y_label'])
    >>> mod.bind([('data', (2, 3))], [('y_label', (2, 1))])
    >>> mod.init_params()
    >>> mod.init_optimizer()
    >>> prefix = os.path.join(tempfile.mkdtemp(), 'model')
    >>> save_module_checkpoint(mod, prefix, 1)
    >>> latest_checkpoint(prefix)
    1
    """
    with atomic_write('%s-symbol.json' % prefix) as tmp:
        mod.symbol.save(tmp)
    with atomic_write('%s-%04d.states' % (prefix, epoch)) as tmp:
        mod.save_optimizer_states(tmp)
    with atomic_write('%s-%04d.params' % (prefix, epoch)) as tmp:
        mod.save_params(tmp)


def save_gluon_checkpoint(net, trainer, prefix, epoch):
    """``trainer.save_states`` and ``net.save_parameters``, crash-safe (parameters last).

    Writes ``prefix-EPOCH.states`` and ``prefix-EPOCH.params``; load with
    ``net.load_parameters(...)`` and ``trainer.load_states(...)``. Gluon's state file includes
    the optimizer (update counts, masks), so Adam and schedules resume exactly.

    Examples
    --------
    >>> import os, tempfile
    >>> import mxnet as mx
    >>> from masked_opt.io import save_gluon_checkpoint, latest_checkpoint
    >>> net = mx.gluon.nn.Dense(1, in_units=2)
    >>> net.initialize()
    >>> trainer = mx.gluon.Trainer(net.collect_params(), 'sgd')
    >>> prefix = os.path.join(tempfile.mkdtemp(), 'net')
    >>> save_gluon_checkpoint(net, trainer, prefix, 3)
    >>> latest_checkpoint(prefix)
    3
    """
    with atomic_write('%s-%04d.states' % (prefix, epoch)) as tmp:
        trainer.save_states(tmp)
    with atomic_write('%s-%04d.params' % (prefix, epoch)) as tmp:
        net.save_parameters(tmp)


def latest_checkpoint(prefix):
    """The newest epoch with both ``prefix-EPOCH.params`` and ``.states``, or None.

    Leftover temporary files (``*.tmp-PID``) of a crashed save are ignored.

    Examples
    --------
    >>> import os, tempfile
    >>> from masked_opt.io import latest_checkpoint
    >>> latest_checkpoint(os.path.join(tempfile.mkdtemp(), 'none')) is None
    True
    """
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r'-(\d{4,})\.params$')
    epochs = []
    for path in glob.glob(glob.escape(prefix) + '-*.params'):
        match = pattern.match(os.path.basename(path))
        if match and os.path.exists('%s-%s.states' % (prefix, match.group(1))):
            epochs.append(int(match.group(1)))
    return max(epochs) if epochs else None


# Documented as part of masked_opt.io, where they are imported from.
for _fn in (atomic_write, save_module_checkpoint, save_gluon_checkpoint, latest_checkpoint):
    _fn.__module__ = 'masked_opt.io'
del _fn
