"""Optimizer state files that load without pickle: :func:`save_states` and :func:`load_states`.

MXNet's ``Trainer.save_states`` and ``Module.save_optimizer_states`` write pickles, and
loading a pickle runs whatever code it names. A file of :func:`save_states` is an ``.npz``
read with ``allow_pickle=False``: the states are plain numeric arrays, and everything else is
one JSON ``'manifest'`` that is checked field by field before anything is written --

* the optimizer (:mod:`masked_opt.plain_optimizer`): its registered name, hyper-parameters,
  update counts (``num_update``, ``_index_update_count``), ``lr_mult``/``wd_mult`` and one of
  MXNet's built-in learning-rate schedulers with its warmup;
* for a masked run, whether it was masked and its masks (:func:`masked_opt.io.masks_to_arrays`);
* per state: the parameter's index and name, the nesting of its arrays (tuples, lists, None),
  and its layout (the weight's shape, bitmaps of the rows and columns its block covers).

Loading writes the saved values into the *live* optimizer, which must be of the type that saved
them, and the states into its updaters, exactly as ``Trainer.load_states`` would (a masked
optimizer keeps its own masks; states saved under other masks are matched to them, see
:class:`~masked_opt.states.MaskedUpdater`). So a resume continues bit for bit, also for Module,
whose pickle holds no update counts. A file that is damaged, crafted, of another model or of
another optimizer raises ``ValueError`` or ``TypeError`` saying what was expected, what was
found and what to do, and nothing is written.
"""
import json

import mxnet as mx
import numpy as np

from . import io as _io
from . import plain_optimizer as _plain
from ._owners import StateOwner
from .states import MaskedUpdater

__all__ = ['save_states', 'load_states', 'FORMAT']

#: The ``format`` field of a state file's manifest.
FORMAT = 'masked_opt.states/1'

_HINT = ('The file is damaged or was not written by masked_opt.save_states: save the states '
         'again with masked_opt.save_states.')
_MAX_DEPTH = 8     # of a state's nesting (MXNet's optimizers use 2)
_DTYPES = tuple(np.dtype(t) for t in ('float16', 'float32', 'float64', 'uint8', 'int8',
                                      'int32', 'int64'))


# ---------------------------------------------------------------- saving

def save_states(trainer_or_module, path):
    """Save the optimizer states of a Gluon Trainer or a Module to ``path``, without pickle.

    The counterpart of ``Trainer.save_states`` and ``Module.save_optimizer_states``; read the
    file back with :func:`load_states`. The file (written atomically) holds the states, their
    layouts, the optimizer's hyper-parameters, update counts and learning-rate schedule, and
    the masks of a masked run.

    Raises
    ------
    TypeError, ValueError
        Before writing anything, for what this format cannot hold: an optimizer that is not
        registered with MXNet or keeps arrays of its own (``LBSGD``, ``DCASGD``), a scheduler
        that is not one of MXNet's four, a wrapper around the masked optimizer, a state that is
        not dense arrays, a dist kvstore's states. The message points to MXNet's pickle route.

    Examples
    --------
    >>> import os, tempfile
    >>> import mxnet as mx, masked_opt as mo
    >>> net = mx.gluon.nn.Embedding(6, 2, prefix='emb_')
    >>> net.initialize()
    >>> trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
    ...     {'base': 'adam', 'masks': {'emb_weight': mo.train_rows_from(4)}})
    >>> with mx.autograd.record():
    ...     loss = net(mx.nd.array([1, 5])).sum()
    >>> loss.backward()
    >>> trainer.step(2)
    >>> path = os.path.join(tempfile.mkdtemp(), 'run.states')
    >>> mo.save_states(trainer, path)
    >>> again = mx.gluon.Trainer(net.collect_params(), 'masked',
    ...     {'base': 'adam', 'masks': {'emb_weight': mo.train_rows_from(4)}})
    >>> mo.load_states(again, path).num_update
    1
    """
    target = StateOwner(trainer_or_module)
    updater = target.updaters[0]
    masked = target.base is not target.optimizer
    arrays = {}
    optimizer = {'masked': masked, 'base': _plain.to_plain(target.base)}
    if masked:
        arrays.update({'mask.' + k: v for k, v in _io.masks_to_arrays(
            target.optimizer.masks).items()})
    layouts = updater.saved_layouts() if isinstance(updater, MaskedUpdater) else {}
    entries = []
    for index, state in updater.states.items():
        where = 'the state of parameter %r' % target.names.get(index, index)
        entry = {'index': _plain.check_index(index, where, _plain.PICKLE_ROUTE),
                 'name': target.names.get(index),
                 'state': _tree_to_plain(state, arrays, where), 'layout': None}
        layout = layouts.get(index)
        if layout is not None:
            entry['layout'] = {'shape': [int(s) for s in layout['shape']]}
            for axis in ('rows', 'cols'):
                key = None
                if layout[axis] is not None:
                    key = '%s%d' % (axis, len(entries))
                    arrays[key] = np.frombuffer(layout[axis], np.uint8)
                entry['layout'][axis] = key
        entries.append(entry)
    manifest = {'format': FORMAT, 'optimizer': optimizer, 'states': entries}
    arrays['manifest'] = np.array(json.dumps(manifest, allow_nan=False))
    with _io.atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:   # a file object: np.savez would append '.npz' to a name
            np.savez(f, **arrays)


def _tree_to_plain(state, arrays, where):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return {type(state).__name__: [_tree_to_plain(s, arrays, where) for s in state]}
    if isinstance(state, mx.nd.NDArray) and state.stype == 'default':
        key = 's%d' % len(arrays)
        arrays[key] = state.asnumpy()
        return {'array': key}
    raise TypeError('%s holds a %s%s; a state file without pickle holds dense arrays, tuples, '
                    'lists and None: %s' % (where, type(state).__name__,
                                            ' of storage type %s' % state.stype
                                            if isinstance(state, mx.nd.NDArray) else '',
                                            _plain.PICKLE_ROUTE))


# ---------------------------------------------------------------- loading (untrusted)

def load_states(trainer_or_module, path):
    """Load a file of :func:`save_states` into a Gluon Trainer or a Module; never unpickles.

    The counterpart of ``Trainer.load_states`` and ``Module.load_optimizer_states``. The saved
    optimizer settings, update counts and learning-rate schedule are written into the live
    optimizer, which must be of the type that saved them (for a masked optimizer: the type it
    wraps); a masked optimizer keeps its own masks, and states saved under other masks, or
    without masks (a warm start), are matched to them as ``Trainer.load_states`` does. Call
    it on a Module after ``init_optimizer``.

    Returns
    -------
    mxnet.optimizer.Optimizer
        The live optimizer, now continuing the saved run (``.set_learning_rate(lr)`` changes
        the learning rate of a new phase).

    Raises
    ------
    ValueError, TypeError
        When the file is not a state file of this format (a pickle of MXNet's ``save_states``
        is refused unopened), is damaged or crafted, or does not fit this model or optimizer
        (another optimizer type, another parameter at an index, another weight shape, a masked
        run's states for an optimizer that is not masked). Raised before anything is written:
        weights, states and the optimizer are as they were. (``OSError`` when the file cannot
        be opened.) A Module's states are matched to its masks at the first update, before any
        weight is written.

    Examples
    --------
    See :func:`save_states`.
    """
    arrays = _read_npz(path)
    manifest = _read_manifest(path, arrays)
    target = StateOwner(trainer_or_module)
    opt_part = manifest['optimizer']
    _plain.check_keys(opt_part, ('masked', 'base'), '%s optimizer' % path, _HINT)
    masked = opt_part['masked']
    if not isinstance(masked, bool):
        raise TypeError("%s optimizer 'masked': expected true or false, received %r. %s"
                        % (path, masked, _HINT))
    mask_arrays = {k[5:]: arrays.pop(k) for k in list(arrays) if k.startswith('mask.')}
    if masked or mask_arrays:
        _io.masks_from_arrays(mask_arrays, '%s, its masks' % path)   # checked, then unused
    if masked and target.base is target.optimizer:
        raise ValueError('%s holds the block-sized states of a masked run; this %s has the plain '
                         '%s optimizer, which cannot use them. Build it with the masked '
                         "optimizer ('masked', with the masks of that run) and load again."
                         % (path, target.kind, type(target.optimizer).__name__))
    attrs = _plain.from_plain(opt_part['base'], target.base, '%s optimizer' % path, _HINT)
    states, layouts = _read_states(path, manifest['states'], arrays, target)
    unused = sorted(set(arrays) - {'manifest'} - _used(manifest['states']))
    if unused:
        raise ValueError('%s holds arrays %s that no state uses. %s' % (path, unused, _HINT))
    try:
        _write(target, attrs, states, layouts)
    except (ValueError, TypeError) as err:   # the matching of states to weights and masks
        raise type(err)('%s: %s' % (path, err)) from None
    return target.optimizer


def _read_npz(path):
    with open(path, 'rb') as f:   # OSError here: the file cannot be opened at all
        if f.read(1) == b'\x80':
            raise ValueError('%s is a pickle (what MXNet\'s Trainer.save_states and '
                             'Module.save_optimizer_states write), not a state file of '
                             'masked_opt.save_states; it was not opened. Load it with MXNet '
                             '(trainer.load_states) only if you trust it.' % path)
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as data:
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise ValueError('a single array')
                return {k: data[k] for k in data.files}
        except Exception as err:  # untrusted bytes: zipfile, zlib, numpy's reader, seeks
            raise ValueError('%s is not a state file of masked_opt.save_states: it cannot be '
                             'read as an .npz of plain arrays (%s: %s). %s'
                             % (path, type(err).__name__, err, _HINT)) from None


def _read_manifest(path, arrays):
    raw = arrays.get('manifest')
    if raw is None or raw.dtype.kind != 'U' or raw.ndim != 0:
        raise ValueError('%s is not a state file of masked_opt.save_states: expected a JSON '
                         "'manifest' (one string), received %s. %s"
                         % (path, 'none' if raw is None else 'an array of dtype %s and shape %s'
                            % (raw.dtype, raw.shape), _HINT))
    try:
        manifest = json.loads(str(raw))
    except (ValueError, RecursionError) as err:
        raise ValueError('%s: the manifest is not valid JSON (%s). %s'
                         % (path, type(err).__name__, _HINT)) from None
    _plain.check_keys(manifest, ('format', 'optimizer', 'states'), '%s manifest' % path, _HINT)
    if manifest['format'] != FORMAT:
        raise ValueError('%s has format %s; this version of masked_opt reads %r. %s'
                         % (path, _plain.json_repr(manifest['format']), FORMAT, _HINT))
    if not isinstance(manifest['states'], list):
        raise TypeError("%s: 'states' must be a list, received %s. %s"
                        % (path, type(manifest['states']).__name__, _HINT))
    return manifest


def _used(entries):
    keys = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ('array', 'rows', 'cols') and isinstance(value, str):
                    keys.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(entries)
    return keys


def _read_states(path, entries, arrays, target):
    """``({index: state of numpy arrays}, {index: layout})``, checked against the model."""
    states, layouts = {}, {}
    for k, entry in enumerate(entries):
        where = '%s states[%d]' % (path, k)
        _plain.check_keys(entry, ('index', 'name', 'state', 'layout'), where, _HINT)
        index = _plain.check_index(entry['index'], where + ' index', _HINT)
        if index in states:
            raise ValueError('%s: index %r appears twice. %s' % (where, index, _HINT))
        name = entry['name']
        if name is not None and not isinstance(name, str):
            raise TypeError('%s name: expected a parameter name or null, received %s. %s'
                            % (where, _plain.json_repr(name), _HINT))
        live = target.names.get(index)
        if live is None:
            raise ValueError('%s: the state of %s is for index %r, which is not a parameter of '
                             'this %s (its indices: %s). Load states into the model that saved '
                             'them.' % (where, name or 'a parameter', index, target.kind,
                                        _span(target.names)))
        if name is not None and name != live:
            raise ValueError('%s: the state saved for parameter %r is at index %r, where this %s '
                             'has parameter %r. Load states into the model that saved them '
                             '(the same parameters in the same order).'
                             % (where, name, index, target.kind, live))
        where = '%s (parameter %r)' % (where, live)
        states[index] = _tree_from_plain(entry['state'], arrays, where + ' state', 0)
        if entry['layout'] is not None:
            layouts[index] = _layout(entry['layout'], arrays, live, where + ' layout')
            weight = target.weight(index)
            if weight is not None and tuple(weight.shape) != layouts[index]['shape']:
                raise ValueError('%s: the state was saved for a weight of shape %s; this weight '
                                 'has shape %s. Optimizer states cannot follow a change of '
                                 'shape: do not load them after growing a table.'
                                 % (where, layouts[index]['shape'], tuple(weight.shape)))
    return states, layouts


def _span(names):
    ints = sorted(i for i in names if not isinstance(i, str))
    return '0..%d' % ints[-1] if ints else 'none'


def _tree_from_plain(node, arrays, where, depth):
    if node is None:
        return None
    if depth >= _MAX_DEPTH or not isinstance(node, dict) or len(node) != 1:
        raise TypeError('%s: expected null, {"array": name}, {"tuple": [...]} or {"list": [...]} '
                        '(nested at most %d deep), received %s. %s'
                        % (where, _MAX_DEPTH, _plain.json_repr(node), _HINT))
    (kind, value), = node.items()
    if kind in ('tuple', 'list') and isinstance(value, list):
        items = [_tree_from_plain(v, arrays, '%s[%d]' % (where, i), depth + 1)
                 for i, v in enumerate(value)]
        return tuple(items) if kind == 'tuple' else items
    if kind == 'array' and isinstance(value, str) and value in arrays:
        array = arrays[value]
        if array.dtype not in _DTYPES or array.ndim == 0:
            raise TypeError('%s: array %r has dtype %s and shape %s; expected a numeric array '
                            '(%s, native byte order) of at least one dimension. %s'
                            % (where, value, array.dtype.str, array.shape,
                               ', '.join(d.name for d in _DTYPES), _HINT))
        return array
    if kind == 'array' and isinstance(value, str):
        raise ValueError('%s: names array %r, which the file does not hold (it holds %s). %s'
                         % (where, value, _plain.json_repr(sorted(arrays)), _HINT))
    raise TypeError('%s: expected {"array": name}, {"tuple": [...]} or {"list": [...]}, '
                    'received %s. %s' % (where, _plain.json_repr(node), _HINT))


def _layout(plain, arrays, name, where):
    """The layout in the form ``MaskedUpdater.restore`` takes (bitmaps as bytes)."""
    _plain.check_keys(plain, ('shape', 'rows', 'cols'), where, _HINT)
    shape = plain['shape']
    if not isinstance(shape, list) or not shape:
        raise TypeError('%s shape: expected a list of sizes, received %s. %s'
                        % (where, _plain.json_repr(shape), _HINT))
    shape = tuple(_plain.check_int(s, where + ' shape', _HINT) for s in shape)
    out = {'name': name, 'shape': shape}
    for axis, n in (('rows', shape[0]), ('cols', shape[1] if len(shape) > 1 else None)):
        key = plain[axis]
        if key is None:
            out[axis] = None
            continue
        bits = arrays.get(key) if isinstance(key, str) and n is not None else None
        if bits is None or bits.dtype != np.uint8 or bits.shape != ((n + 7) // 8,):
            raise ValueError('%s %s: expected null or the name of a uint8 bitmap of %s bytes '
                             '(one bit per %s), received %s%s. %s'
                             % (where, axis, None if n is None else (n + 7) // 8, axis[:-1],
                                _plain.json_repr(key), '' if bits is None else
                                ' (dtype %s, shape %s)' % (bits.dtype, bits.shape), _HINT))
        out[axis] = bits.tobytes()
    return out


# ---------------------------------------------------------------- writing, all or nothing

def _nd(state):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(_nd(s) for s in state)
    return mx.nd.array(state, dtype=state.dtype)


def _write(target, attrs, states, layouts):
    """Settings into the live optimizer, then states into every updater; undone on an error."""
    base = target.base
    kept = dict(vars(base))
    done = []
    try:
        for field, value in attrs.items():
            setattr(base, field, value)
        for updater in target.updaters:
            old = (dict(updater.states), _layouts_of(updater))
            if isinstance(updater, MaskedUpdater):
                updater.restore({i: _nd(s) for i, s in states.items()}, layouts)
            else:
                _check_plain_states(target, states)
                updater.states = {i: _nd(s) for i, s in states.items()}
                updater.states_synced = dict.fromkeys(updater.states, False)
            done.append((updater, old))
    except Exception:
        vars(base).clear()
        vars(base).update(kept)
        for updater, (old_states, old_layouts) in done:
            if isinstance(updater, MaskedUpdater):
                updater.restore(old_states, old_layouts)
            else:
                updater.states = old_states
                updater.states_synced = dict.fromkeys(old_states, False)
        raise


def _layouts_of(updater):
    return updater.saved_layouts() if isinstance(updater, MaskedUpdater) else None


def _check_plain_states(target, states):
    """Each state has the arrays the (unmasked) optimizer makes for its weight."""
    for index, state in states.items():
        weight = target.weight(index)
        if weight is None:
            continue
        fresh = target.base.create_state_multi_precision(index, weight)
        if _signature(fresh) != _signature(state):
            raise ValueError('parameter %r: the loaded state has arrays %s; the %s optimizer '
                             'makes %s for this weight. Load states saved by the same optimizer '
                             '(type and settings such as momentum and multi_precision) for the '
                             'same model.' % (target.names[index], _signature(state),
                                              type(target.base).__name__, _signature(fresh)))


def _signature(state):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return [_signature(s) for s in state]
    return '%s %s' % (np.dtype(state.dtype).name, tuple(state.shape))
