"""Files: masks without pickle, and checkpoints that are never loaded half-written.

Masks
    :func:`save_masks` writes a ``.npz`` holding plain arrays and a JSON manifest keyed by
    parameter name; :func:`load_masks` reads it with ``allow_pickle=False`` and rebuilds the
    masks through the same validating constructors as :func:`masked_opt.train_rows` & co. A mask
    file is therefore safe to open from anyone. (Optimizer state files are another matter:
    MXNet writes them with pickle, so load only state files you trust.)

Checkpoints
    :func:`atomic_write` gives a temporary name in the target's folder and renames it over the
    target only when writing finished, so a crash never leaves a truncated file under the real
    name. :func:`save_module_checkpoint` and :func:`save_gluon_checkpoint` write a checkpoint
    this way, the parameters last; :func:`latest_checkpoint` returns the newest epoch whose
    files are all present, i.e. the newest complete checkpoint.
"""
import contextlib
import glob
import json
import os
import re

import numpy as np

from .masks import Mask, _From, _Indices, _Scales, as_mask

__all__ = ['save_masks', 'load_masks', 'atomic_write', 'save_module_checkpoint',
           'save_gluon_checkpoint', 'latest_checkpoint']

_FORMAT = 'masked_opt.masks/1'


# ---------------------------------------------------------------- masks

def _spec_to_json(spec, arrays):
    if isinstance(spec, _From):
        return {'kind': 'from', 'start': spec.start}
    key = 'a%d' % len(arrays)
    if isinstance(spec, _Indices):
        arrays[key] = spec.indices
        return {'kind': 'indices', 'helper': spec.helper, 'inside': spec.inside, 'array': key}
    if isinstance(spec, _Scales):
        arrays[key] = spec.values
        return {'kind': 'scales', 'helper': spec.helper, 'array': key}
    raise TypeError('cannot save a mask axis of type %s; expected one made by masked_opt '
                    'helpers (train_rows_from, train_rows, scale_rows, ...)' % type(spec).__name__)


def _spec_from_json(entry, arrays, where):
    kind = entry.get('kind')
    if kind == 'from':
        return _From(int(entry['start']))
    if kind in ('indices', 'scales'):
        if entry.get('array') not in arrays:
            raise ValueError('%s: the file lacks array %r' % (where, entry.get('array')))
        values = arrays[entry['array']]
        if kind == 'indices':
            return _Indices(values, float(entry['inside']), str(entry['helper']))
        return _Scales(values, str(entry['helper']))
    raise ValueError("%s: unknown mask axis kind %r; expected 'from', 'indices' or 'scales'"
                     % (where, kind))


def save_masks(path, masks):
    """Save masks to ``path`` (``.npz``) without pickle.

    Parameters
    ----------
    path : str
        The file to write (written atomically, see :func:`atomic_write`).
    masks : dict
        ``{parameter name or glob: Mask or {'rows': ..., 'cols': ...}}``, as given to
        :class:`masked_opt.Masked`. Keys must be strings (names of Gluon Parameters are
        ``param.name``).

    Examples
    --------
    >>> import os, tempfile
    >>> import masked_opt as mo
    >>> from masked_opt.io import save_masks, load_masks
    >>> path = os.path.join(tempfile.mkdtemp(), 'masks.npz')
    >>> masks = {'book_embedding_weight': mo.train_rows_from(3) & mo.train_cols([7])}
    >>> save_masks(path, masks)
    >>> load_masks(path) == masks
    True
    """
    arrays, manifest = {}, []
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError('save_masks expects parameter names (str) as keys, received %s %r; '
                            'use param.name for a Gluon Parameter' % (type(name).__name__, name))
        mask = as_mask(mask, name=repr(name))
        manifest.append({'name': name,
                         'rows': [_spec_to_json(s, arrays) for s in mask.rows],
                         'cols': [_spec_to_json(s, arrays) for s in mask.cols]})
    arrays['manifest'] = np.array(json.dumps({'format': _FORMAT, 'masks': manifest}))
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:  # a file object: np.savez would append '.npz' to a name
            np.savez(f, **arrays)


def load_masks(path):
    """Load masks saved by :func:`save_masks`; never unpickles anything.

    Returns
    -------
    dict
        ``{name: Mask}``, ready for ``Masked(masks=...)``.

    Raises
    ------
    ValueError
        When the file is not a mask file of this format, or a mask in it is invalid (the same
        checks as the mask helpers).

    Examples
    --------
    >>> import os, tempfile
    >>> import masked_opt as mo
    >>> from masked_opt.io import save_masks, load_masks
    >>> path = os.path.join(tempfile.mkdtemp(), 'm.npz')
    >>> save_masks(path, {'w': {'rows': [0, 0.5, 1]}})
    >>> load_masks(path)['w'].resolve((3, 2), 'w')[0].tolist()
    [0.0, 0.5, 1.0]
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    try:
        header = json.loads(str(arrays.pop('manifest')))
    except (KeyError, ValueError):
        raise ValueError('%s is not a masked_opt mask file: expected an .npz written by '
                         'masked_opt.io.save_masks with a JSON manifest' % path) from None
    if header.get('format') != _FORMAT:
        raise ValueError('%s has format %r; this version of masked_opt reads %r'
                         % (path, header.get('format'), _FORMAT))
    masks = {}
    for entry in header['masks']:
        where = '%s, mask %r' % (path, entry.get('name'))
        masks[entry['name']] = Mask(
            rows=tuple(_spec_from_json(s, arrays, where) for s in entry['rows']),
            cols=tuple(_spec_from_json(s, arrays, where) for s in entry['cols']))
    return masks


# ---------------------------------------------------------------- atomic files, checkpoints

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

