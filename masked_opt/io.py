"""Files: masks without pickle, and checkpoints that are never loaded half-written.

Masks
    :func:`save_masks` writes a ``.npz`` holding plain arrays and a JSON manifest keyed by
    parameter name; :func:`load_masks` reads it with ``allow_pickle=False``, checks every field
    of the manifest, and rebuilds each mask by calling the helper that made it
    (:func:`masked_opt.train_rows` & co.), so a file passes exactly the helpers' validation. A
    mask file is therefore safe to open from anyone: a damaged or crafted one raises
    ``ValueError``/``TypeError`` and gives no mask. (Optimizer state files are another matter:
    MXNet writes them with pickle, so load only state files you trust.)

Checkpoints (defined in ``masked_opt/_checkpoints.py``, documented and imported here)
    :func:`atomic_write` gives a temporary name in the target's folder and renames it over the
    target only when writing finished, so a crash never leaves a truncated file under the real
    name. :func:`save_module_checkpoint` and :func:`save_gluon_checkpoint` write a checkpoint
    this way, the parameters last; :func:`latest_checkpoint` returns the newest epoch whose
    files are all present, i.e. the newest complete checkpoint.
"""
import json

import numpy as np

from . import masks as _masks
from ._axis import AxisSpec
from ._checkpoints import (
    atomic_write,
    latest_checkpoint,
    save_gluon_checkpoint,
    save_module_checkpoint,
)
from .masks import Mask, as_mask

__all__ = ['save_masks', 'load_masks', 'masks_to_arrays', 'masks_from_arrays', 'atomic_write',
           'save_module_checkpoint', 'save_gluon_checkpoint', 'latest_checkpoint']

_FORMAT = 'masked_opt.masks/1'


# ---------------------------------------------------------------- masks

# Every axis spec a mask file may hold is one made by a public helper: its name, the axis it
# applies to, the kind of data it takes and, for indices, the scale inside the listed indices.
# Loading rebuilds each spec by calling that helper, so a file passes exactly the validation
# of the helpers (and a spec no helper makes is refused, when saving and when loading).
_HELPERS = {
    'train_rows_from': ('rows', 'from', None),
    'train_rows': ('rows', 'indices', 1.0),
    'freeze_rows': ('rows', 'indices', 0.0),
    'scale_rows': ('rows', 'scales', None),
    'train_cols': ('cols', 'indices', 1.0),
    'freeze_cols': ('cols', 'indices', 0.0),
    'scale_cols': ('cols', 'scales', None),
}
_SPEC_KEYS = {'from': ('kind', 'start'), 'indices': ('kind', 'helper', 'inside', 'array'),
              'scales': ('kind', 'helper', 'array')}
_HINT = ('The file is damaged or was not written by masked_opt.io.save_masks: write it again '
         'with save_masks, from masks built with the helpers (train_rows_from, train_rows, '
         'scale_rows, ...).')


def _helper_names(axis, kind):
    return sorted(h for h, (a, k, _) in _HELPERS.items() if a == axis and k == kind)


def _spec_to_json(spec, arrays, axis, where):
    """The spec's own plain form, once the file format is sure to rebuild it (a helper made it,
    on the axis that helper serves)."""
    kind = spec.kind if isinstance(spec, AxisSpec) else None
    if kind == 'from':
        if axis != 'rows':
            raise ValueError('%s: train_rows_from applies to rows only; received it in %s'
                             % (where, axis))
        return spec.to_plain(arrays)
    if kind in ('indices', 'scales'):
        known = _helper_names(axis, kind)
        if spec.helper not in known or (kind == 'indices'
                                        and spec.inside != _HELPERS[spec.helper][2]):
            raise ValueError('%s: cannot save a %s spec %r (helper %r, %s) in %s; expected '
                             'one made by %s' % (where, kind, spec, spec.helper,
                                                 getattr(spec, 'inside', ''), axis,
                                                 ' or '.join(known)))
        return spec.to_plain(arrays)
    raise TypeError('%s: cannot save a mask axis of type %s; expected one made by masked_opt '
                    'helpers (train_rows_from, train_rows, scale_rows, ...)'
                    % (where, type(spec).__name__))


def _describe(value):
    return '%s %r' % (type(value).__name__, value)


def _check_keys(obj, required, where, what):
    """``obj`` is a JSON object with exactly the keys ``required``."""
    if not isinstance(obj, dict):
        raise TypeError('%s: expected %s (a JSON object with keys %s), received %s. %s'
                        % (where, what, list(required), _describe(obj), _HINT))
    missing = [k for k in required if k not in obj]
    if missing:
        raise ValueError('%s: %s lacks key %s; expected keys %s. %s'
                         % (where, what, ', '.join(map(repr, missing)), list(required), _HINT))
    unknown = sorted(set(obj) - set(required), key=str)
    if unknown:
        raise ValueError('%s: %s has unknown key(s) %s; expected exactly %s. %s'
                         % (where, what, unknown, list(required), _HINT))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _spec_from_json(entry, arrays, used, axis, where):
    """Rebuild one axis spec by calling the helper that made it (its validation applies)."""
    if isinstance(entry, dict) and 'kind' in entry:
        kind = entry['kind']
        if not isinstance(kind, str) or kind not in _SPEC_KEYS:
            raise ValueError("%s: unknown mask axis kind %s; expected 'from', 'indices' or "
                             "'scales'. %s" % (where, _describe(kind), _HINT))
    else:
        kind = None
    _check_keys(entry, _SPEC_KEYS.get(kind, ('kind',)), where, 'a mask axis spec')
    if kind == 'from':
        if axis != 'rows':
            raise ValueError('%s: train_rows_from applies to rows only; received it in %s. %s'
                             % (where, axis, _HINT))
        start = entry['start']
        if not isinstance(start, int) or isinstance(start, bool):
            raise TypeError("%s: 'start' of train_rows_from must be a non-negative integer "
                            "(the number of old rows), received %s. %s"
                            % (where, _describe(start), _HINT))
        helper, argument = 'train_rows_from', start
    else:
        helper = entry['helper']
        known = _helper_names(axis, kind)
        if not isinstance(helper, str) or helper not in known:
            raise ValueError("%s: 'helper' of a %s spec in %s must be %s, received %s. %s"
                             % (where, kind, axis, ' or '.join(map(repr, known)),
                                _describe(helper), _HINT))
        if kind == 'indices':
            inside, expected = entry['inside'], _HELPERS[helper][2]
            if not _is_number(inside) or inside != expected:
                raise ValueError("%s: 'inside' (the scale of the listed indices) is %s; %s "
                                 "always has %r (and %r elsewhere). Fractional scales are "
                                 "saved as scale_rows/scale_cols arrays. %s"
                                 % (where, _describe(inside), helper, expected,
                                    1.0 - expected, _HINT))
        name = entry['array']
        if not isinstance(name, str) or name not in arrays:
            raise ValueError("%s: the file lacks array %s named by 'array'; it holds %s. %s"
                             % (where, _describe(name), sorted(arrays), _HINT))
        argument = arrays[name]
        used.add(name)
        kinds = 'iuf' if kind == 'indices' else 'iufb'
        if argument.dtype.kind not in kinds:
            raise TypeError('%s: array %r has dtype %s; %s expects %s. %s'
                            % (where, name, argument.dtype, helper,
                               'integer indices (an integer array)' if kind == 'indices'
                               else 'numbers in [0, 1] (a float array)', _HINT))
    try:
        mask = getattr(_masks, helper)(argument)
    except (TypeError, ValueError) as err:
        raise type(err)('%s: %s. %s' % (where, err, _HINT)) from None
    return (mask.rows + mask.cols)[0]


def _read_npz(path):
    """``{name: numpy array}`` of an .npz, without unpickling; ValueError if it is not one."""
    try:
        data = np.load(path, allow_pickle=False)
    except OSError:
        raise  # no such file, a folder, no permission: not about the file's content
    except Exception as err:  # untrusted bytes: zipfile, zlib, numpy's format reader
        raise ValueError('%s is not a masked_opt mask file: expected an .npz written by '
                         'masked_opt.io.save_masks, but it cannot be read as one (%s: %s)'
                         % (path, type(err).__name__, err)) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError('%s is not a masked_opt mask file: expected an .npz written by '
                         'masked_opt.io.save_masks, received a single array (.npy)' % path)
    try:
        arrays = {k: data[k] for k in data.files}
    except Exception as err:
        raise ValueError('%s: cannot read the arrays of this .npz without unpickling (%s: %s). '
                         '%s' % (path, type(err).__name__, err, _HINT)) from None
    finally:
        data.close()
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise ValueError('%s: member %r is not a numpy array. %s' % (path, name, _HINT))
    return arrays


def _read_header(path, arrays):
    manifest = arrays.pop('manifest', None)
    if manifest is None or manifest.dtype.kind != 'U' or manifest.ndim != 0:
        raise ValueError('%s is not a masked_opt mask file: expected an .npz written by '
                         'masked_opt.io.save_masks with a JSON manifest (one string), received '
                         '%s' % (path, 'no manifest' if manifest is None else
                                 'a manifest of dtype %s and shape %s'
                                 % (manifest.dtype, manifest.shape)))
    try:
        header = json.loads(str(manifest))
    except (ValueError, RecursionError) as err:
        raise ValueError('%s: its manifest is not valid JSON (%s). %s'
                         % (path, type(err).__name__, _HINT)) from None
    if not isinstance(header, dict):
        raise TypeError('%s: its manifest must be a JSON object, received %s. %s'
                        % (path, type(header).__name__, _HINT))
    if 'format' not in header:
        raise ValueError("%s: the manifest lacks key 'format'; expected %r. %s"
                         % (path, _FORMAT, _HINT))
    if header['format'] != _FORMAT:
        raise ValueError('%s has format %s; this version of masked_opt reads %r. %s'
                         % (path, _describe(header['format']), _FORMAT, _HINT))
    _check_keys(header, ('format', 'masks'), path, 'the manifest')
    if not isinstance(header['masks'], list):
        raise TypeError("%s: the manifest's 'masks' must be a list of masks, received %s. %s"
                        % (path, type(header['masks']).__name__, _HINT))
    return header


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
    arrays = masks_to_arrays(masks)
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:  # a file object: np.savez would append '.npz' to a name
            np.savez(f, **arrays)


def masks_to_arrays(masks):
    """The arrays :func:`save_masks` writes: plain numeric arrays and a JSON ``'manifest'``.

    For a file that holds masks next to other arrays (the optimizer state files of
    :mod:`masked_opt.statefile`); :func:`masks_from_arrays` reads them back.

    Examples
    --------
    >>> import masked_opt as mo
    >>> from masked_opt.io import masks_to_arrays, masks_from_arrays
    >>> arrays = masks_to_arrays({'w': mo.train_rows([2, 5])})
    >>> sorted(arrays)
    ['a0', 'manifest']
    >>> masks_from_arrays(arrays, 'example') == {'w': mo.train_rows([2, 5])}
    True
    """
    arrays, manifest = {}, []
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError('save_masks expects parameter names (str) as keys, received %s %r; '
                            'use param.name for a Gluon Parameter' % (type(name).__name__, name))
        mask = as_mask(mask, name=repr(name))
        where = 'mask %r' % name
        manifest.append({'name': name,
                         'rows': [_spec_to_json(s, arrays, 'rows', where) for s in mask.rows],
                         'cols': [_spec_to_json(s, arrays, 'cols', where) for s in mask.cols]})
    arrays['manifest'] = np.array(json.dumps({'format': _FORMAT, 'masks': manifest}))
    return arrays


def load_masks(path):
    """Load masks saved by :func:`save_masks`; never unpickles anything.

    The file is treated as untrusted. Every field is checked: the manifest is one JSON object
    of this format with exactly the expected keys and types; each axis spec names a helper
    that exists for its axis (``train_rows_from``, ``train_rows``, ``freeze_rows`` and
    ``scale_rows`` for rows, the ``*_cols`` ones for columns), an indices spec's inside-scale
    is that helper's own (1 for ``train_*``, 0 for ``freeze_*``), and ``start`` is an
    integer; each array is a plain numeric array, used by the manifest. Then every spec is
    rebuilt by calling its helper, so indices and scales pass exactly the helpers' checks
    (integers, 1-D, non-negative, not repeated; scales finite and in ``[0, 1]``). Whether a
    mask fits its parameter (lengths, index range) is checked when the optimizer first sees
    the weight, as for masks built in Python.

    Returns
    -------
    dict
        ``{name: Mask}``, ready for ``Masked(masks=...)``.

    Raises
    ------
    ValueError, TypeError
        When the file is not a readable ``.npz`` mask file of this format, or anything in it
        is malformed or out of range. The message names the file, the mask and the axis
        spec, what was expected and what was found. (``OSError`` when the file cannot be
        opened at all.)

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
    return masks_from_arrays(_read_npz(path), path)


def masks_from_arrays(arrays, where):
    """Masks from the arrays of :func:`masks_to_arrays`, checked as :func:`load_masks` checks a
    file's (``where`` names their source in error messages); see :func:`masks_to_arrays`."""
    arrays = dict(arrays)
    path = where
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise TypeError('%s: member %r is %s, not a numpy array. %s'
                            % (path, name, type(value).__name__, _HINT))
    header = _read_header(path, arrays)
    masks, used = {}, set()
    for position, entry in enumerate(header['masks']):
        where = "%s, masks[%d]" % (path, position)
        _check_keys(entry, ('name', 'rows', 'cols'), where, 'a mask')
        name = entry['name']
        if not isinstance(name, str) or not name:
            raise TypeError("%s: 'name' must be a non-empty string (a parameter name or glob), "
                            "received %s. %s" % (where, _describe(name), _HINT))
        if name in masks:
            raise ValueError('%s: mask %r appears twice; expected each name once. %s'
                             % (where, name, _HINT))
        where = '%s, mask %r' % (path, name)
        specs = {}
        for axis in ('rows', 'cols'):
            if not isinstance(entry[axis], list):
                raise TypeError("%s: %r must be a list of axis specs, received %s. %s"
                                % (where, axis, _describe(entry[axis]), _HINT))
            specs[axis] = tuple(_spec_from_json(spec, arrays, used, axis,
                                                '%s, %s[%d]' % (where, axis, i))
                                for i, spec in enumerate(entry[axis]))
        masks[name] = Mask(rows=specs['rows'], cols=specs['cols'])
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError('%s holds arrays %s that no mask uses; expected only the arrays its '
                         'manifest names. %s' % (path, unused, _HINT))
    return masks
