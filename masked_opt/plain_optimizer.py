"""An MXNet optimizer's settings, update counts and learning-rate schedule as checked plain data.

What a state file without pickle (:mod:`masked_opt.statefile`) holds about the optimizer.
:func:`to_plain` turns an optimizer into JSON-ready values: every attribute MXNet's
``Optimizer`` and its subclass keep (hyper-parameters, ``num_update``, the per-parameter
update counts ``_index_update_count``, ``lr_mult``/``wd_mult``), and its learning-rate
scheduler. :func:`from_plain` checks such values against a *live* optimizer of the same type
and returns the attributes to write into it. Nothing in the data chooses code: the class is the
live optimizer's, and a scheduler is one of MXNet's built-in ones (``FactorScheduler``,
``MultiFactorScheduler``, ``PolyScheduler``, ``CosineScheduler``), rebuilt by calling its
constructor, which checks its arguments, before its saved attributes are set.

Three attributes describe the model rather than the run and stay those of the live optimizer:
``param_dict`` (Gluon's Parameters), ``idx2name`` and ``sym_info`` (Module's names).
Anything that is not plain data (an array kept on the optimizer, as ``LBSGD`` and ``DCASGD``
do; a scheduler of another class; a NumPy float32 setting) is refused with the attribute's
name, when saving.
"""
import math
import numbers

from mxnet import lr_scheduler as mx_lrs
from mxnet import optimizer as mx_opt

__all__ = ['to_plain', 'from_plain', 'optimizer_name', 'PICKLE_ROUTE']

#: How to save what this format cannot hold (used in error messages).
PICKLE_ROUTE = ("save it with MXNet's pickle-based trainer.save_states or "
                "mod.save_optimizer_states instead (load such a file only if you trust it)")

_LIVE = ('param_dict', 'idx2name', 'sym_info')          # the model's, never the file's
_MULTS = ('lr_mult', 'wd_mult')
_COUNTS = ('_all_index_update_counts', '_index_update_count')
_COUNT_FIELDS = ('num_update', 'begin_num_update', 'aggregate_num')   # integers >= 0
# Settings that MXNet leaves at None until they are used or given.
_NULLABLE = ('clip_gradient', 'lower_bound', 'upper_bound', 'clip_weights', 'last_lr', 'cur_lr')

# MXNet's schedulers: class, the attributes that are integers, the constructor's arguments.
_WARMUP = ('warmup_steps', 'warmup_begin_lr', 'warmup_mode')


def _sched_args(f, *names, **renamed):
    args = {n: f[n] for n in names + _WARMUP}
    args.update({new: f[old] for new, old in renamed.items()})
    args['base_lr'] = f['warmup_final_lr']     # the constructor's base_lr (later overwritten)
    return args


_SCHEDULERS = {
    'FactorScheduler': (mx_lrs.FactorScheduler, ('step', 'count'),
                        lambda f: _sched_args(f, 'step', 'factor', 'stop_factor_lr')),
    'MultiFactorScheduler': (mx_lrs.MultiFactorScheduler, ('cur_step_ind', 'count'),
                             lambda f: _sched_args(f, 'step', 'factor')),
    'PolyScheduler': (mx_lrs.PolyScheduler, ('max_update', 'max_steps'),
                      lambda f: _sched_args(f, 'max_update', 'final_lr', pwr='power')),
    'CosineScheduler': (mx_lrs.CosineScheduler, ('max_update', 'max_steps'),
                        lambda f: _sched_args(f, 'max_update', 'final_lr')),
}


def optimizer_name(opt):
    """The name MXNet registers ``opt``'s class under (``'adam'``), or None if it is not one.

    Examples
    --------
    >>> import mxnet as mx
    >>> optimizer_name(mx.optimizer.Adam())
    'adam'
    """
    name = type(opt).__name__.lower()
    return name if mx_opt.Optimizer.opt_registry.get(name) is type(opt) else None


def _scalar(value, where):
    """A JSON-ready copy of a setting, or TypeError saying why it cannot be one."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float):       # float64 included; float32 would change the arithmetic
        if not math.isfinite(value):
            raise TypeError('%s is %r, which a state file without pickle does not hold; %s'
                            % (where, value, PICKLE_ROUTE))
        return float(value)
    raise TypeError('%s is a %s, not plain data (None, a bool, a Python int or float, a str); '
                    'a state file without pickle cannot hold it: %s'
                    % (where, type(value).__name__, PICKLE_ROUTE))


def _key(key, where):
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError('%s has a key %r of type %s; expected parameter indices (int) or names '
                        '(str): %s' % (where, key, type(key).__name__, PICKLE_ROUTE))
    return key


def _pairs(mapping, where, value=_scalar):
    return [[_key(k, where), value(v, '%s[%r]' % (where, k))] for k, v in mapping.items()]


def to_plain(opt):
    """Everything ``opt`` keeps about the run, as JSON-ready values (see the module docstring).

    Raises
    ------
    TypeError
        When ``opt`` is not a registered MXNet optimizer or keeps something that is not plain
        data; the message names it and points to MXNet's pickle-based route.

    Examples
    --------
    >>> import mxnet as mx
    >>> plain = to_plain(mx.optimizer.SGD(learning_rate=0.1, momentum=0.9))
    >>> plain['type'], plain['fields']['momentum'], plain['lr_scheduler']
    ('sgd', 0.9, None)
    """
    name = optimizer_name(opt)
    if name is None:
        raise TypeError('cannot save a %s without pickle: expected an optimizer registered with '
                        'MXNet (mx.optimizer.create finds it by name); %s'
                        % (type(opt).__name__, PICKLE_ROUTE))
    where = '%s optimizer: attribute' % name
    fields = {}
    for field, value in sorted(vars(opt).items()):
        if field in _LIVE or field in _MULTS or field in _COUNTS or field == 'lr_scheduler':
            continue
        fields[field] = _scalar(value, '%s %r' % (where, field))
    counts = opt._all_index_update_counts
    current = [d for d, c in counts.items() if c is opt._index_update_count]
    if len(current) != 1:
        raise TypeError('%s _index_update_count is not one of _all_index_update_counts; %s'
                        % (where, PICKLE_ROUTE))
    return {'type': name, 'fields': fields,
            'lr_mult': _pairs(opt.lr_mult, where + ' lr_mult'),
            'wd_mult': _pairs(opt.wd_mult, where + ' wd_mult'),
            'update_counts': [[_key(d, where + ' _all_index_update_counts'),
                               _pairs(c, where + ' _index_update_count')]
                              for d, c in counts.items()],
            'current_device': current[0],
            'lr_scheduler': _scheduler_to_plain(opt.lr_scheduler, name)}


def _scheduler_to_plain(sched, opt_name):
    if sched is None:
        return None
    kind = type(sched).__name__
    if _SCHEDULERS.get(kind, (None,))[0] is not type(sched):
        raise TypeError('the %s optimizer has a learning-rate scheduler of class %s; a state file '
                        'without pickle holds only MXNet\'s %s: %s'
                        % (opt_name, kind, ', '.join(_SCHEDULERS), PICKLE_ROUTE))
    where = '%s attribute' % kind
    fields = {}
    for field, value in sorted(vars(sched).items()):
        if isinstance(value, list):
            fields[field] = [_scalar(v, '%s %r' % (where, field)) for v in value]
        else:
            fields[field] = _scalar(value, '%s %r' % (where, field))
    return {'type': kind, 'fields': fields}


# ---------------------------------------------------------------- reading (untrusted)

def _describe(value):
    return '%s %s' % (type(value).__name__, json_repr(value))


def json_repr(value):
    """A short text of a JSON value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def check_keys(obj, required, where, hint):
    """``obj`` is a dict with exactly the keys ``required``; TypeError/ValueError otherwise."""
    if not isinstance(obj, dict):
        raise TypeError('%s: expected a JSON object with keys %s, received %s. %s'
                        % (where, sorted(required), _describe(obj), hint))
    missing = sorted(set(required) - set(obj))
    unknown = sorted(set(obj) - set(required), key=str)
    if missing or unknown:
        raise ValueError('%s: expected exactly the keys %s; %s. %s'
                         % (where, sorted(required), '; '.join(
                             part for part in (missing and 'missing %s' % missing,
                                               unknown and 'unknown %s' % unknown) if part),
                            hint))


def check_int(value, where, hint, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TypeError('%s: expected an integer >= %d, received %s. %s'
                        % (where, minimum, _describe(value), hint))
    return value


def check_index(value, where, hint):
    """A parameter index (int >= 0) or name (non-empty str), as MXNet keys states."""
    if isinstance(value, str) and value:
        return value
    return check_int(value, where + ' (a parameter index, or a name)', hint)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_like(value, live, field, where, hint):
    """The saved ``value`` of a setting whose live value is ``live``: the same kind of data."""
    if field in _COUNT_FIELDS:
        return check_int(value, where, hint)
    if isinstance(live, bool) or isinstance(live, str):
        ok, kind = type(value) is type(live), type(live).__name__
    elif _number(live) or live is None:
        nullable = live is None or field in _NULLABLE
        ok = _number(value) or (nullable and value is None)
        kind = 'a number or null' if nullable else 'a number'
        ok = ok and (value is None or math.isfinite(value))
    else:
        ok, kind = False, type(live).__name__
    if not ok:
        raise TypeError('%s: expected %s (as the live optimizer has %r), received %s. %s'
                        % (where, kind, live, _describe(value), hint))
    return value


def _check_pairs(pairs, where, hint, value):
    if not isinstance(pairs, list):
        raise TypeError('%s: expected a list of [key, value] pairs, received %s. %s'
                        % (where, _describe(pairs), hint))
    out = {}
    for k, pair in enumerate(pairs):
        here = '%s[%d]' % (where, k)
        if not isinstance(pair, list) or len(pair) != 2:
            raise TypeError('%s: expected a [key, value] pair, received %s. %s'
                            % (here, _describe(pair), hint))
        key = check_index(pair[0], here + ' key', hint)
        if key in out:
            raise ValueError('%s: key %r appears twice; expected each once. %s'
                             % (here, key, hint))
        out[key] = value(pair[1], here + ' value', hint)
    return out


def _check_number(value, where, hint):
    return _check_like(value, 0.0, '', where, hint)


def from_plain(plain, live, where, hint):
    """The attributes to write into ``live`` so that it continues the saved run.

    ``plain`` comes from a file: every key, type and range is checked against ``live`` (an
    optimizer of the type that saved it) before anything is returned; nothing is written.

    Examples
    --------
    >>> import mxnet as mx
    >>> saved = mx.optimizer.Adam(learning_rate=0.1)
    >>> saved.num_update = 7
    >>> attrs = from_plain(to_plain(saved), mx.optimizer.Adam(), 'example', '')
    >>> attrs['lr'], attrs['num_update']
    (0.1, 7)
    """
    check_keys(plain, ('type', 'fields', 'lr_mult', 'wd_mult', 'update_counts',
                       'current_device', 'lr_scheduler'), where, hint)
    name = optimizer_name(live)
    if plain['type'] != name:
        raise ValueError('%s: the states were saved with optimizer %s; this one is %r (%s). '
                         'Build the Trainer or Module with the optimizer that saved them.'
                         % (where, _describe(plain['type']), name, type(live).__name__))
    live_fields = {f: v for f, v in vars(live).items()
                   if f not in _LIVE + _MULTS + _COUNTS + ('lr_scheduler',)}
    check_keys(plain['fields'], tuple(live_fields), where + ' fields', hint)
    attrs = {f: _check_like(plain['fields'][f], v, f, '%s field %r' % (where, f), hint)
             for f, v in live_fields.items()}
    for mult in _MULTS:
        attrs[mult] = _check_pairs(plain[mult], '%s %s' % (where, mult), hint, _check_number)
    counts = {}
    entries = plain['update_counts']
    if not isinstance(entries, list) or not entries:
        raise TypeError('%s update_counts: expected a non-empty list of [device, counts], '
                        'received %s. %s' % (where, _describe(entries), hint))
    for k, entry in enumerate(entries):
        here = '%s update_counts[%d]' % (where, k)
        if not isinstance(entry, list) or len(entry) != 2:
            raise TypeError('%s: expected [device id, [[index, count], ...]], received %s. %s'
                            % (here, _describe(entry), hint))
        device = check_int(entry[0], here + ' device id', hint)
        if device in counts:
            raise ValueError('%s: device %d appears twice. %s' % (here, device, hint))
        counts[device] = _check_pairs(entry[1], here, hint, check_int)
    current = plain['current_device']
    if isinstance(current, bool) or current not in counts:
        raise ValueError('%s current_device: expected one of the devices %s, received %s. %s'
                         % (where, sorted(counts), _describe(current), hint))
    attrs['_all_index_update_counts'] = counts
    attrs['_index_update_count'] = counts[current]
    attrs['lr_scheduler'] = _scheduler_from_plain(plain['lr_scheduler'],
                                                  where + ' lr_scheduler', hint)
    return attrs


def _scheduler_from_plain(plain, where, hint):
    if plain is None:
        return None
    check_keys(plain, ('type', 'fields'), where, hint)
    kind = plain['type']
    if not isinstance(kind, str) or kind not in _SCHEDULERS:
        raise ValueError('%s: expected one of MXNet\'s schedulers %s, received %s. %s'
                         % (where, sorted(_SCHEDULERS), _describe(kind), hint))
    cls, ints, args = _SCHEDULERS[kind]
    fields = plain['fields']
    # The attributes a scheduler of this class has (one built with valid arguments).
    reference = cls(**_REFERENCE_ARGS[kind])
    check_keys(fields, tuple(vars(reference)), '%s (%s) fields' % (where, kind), hint)
    for field, value in fields.items():
        here = '%s (%s) field %r' % (where, kind, field)
        if field == 'warmup_mode':
            if not isinstance(value, str):
                raise TypeError("%s: expected 'linear' or 'constant', received %s. %s"
                                % (here, _describe(value), hint))
        elif field == 'step' and kind == 'MultiFactorScheduler':
            if not isinstance(value, list) or not value:
                raise TypeError('%s: expected a non-empty list of integers, received %s. %s'
                                % (here, _describe(value), hint))
            for k, v in enumerate(value):
                check_int(v, '%s[%d]' % (here, k), hint, minimum=1)
        elif field in ints or field == 'warmup_steps' or field == 'step':
            check_int(value, here, hint, minimum=-(2 ** 62) if field == 'max_steps' else 0)
        else:
            _check_number(value, here, hint)
    try:    # MXNet's own checks of the arguments (step >= 1, factor <= 1, warmup mode, ...)
        sched = cls(**args(fields))
    except (AssertionError, ValueError, TypeError) as err:
        raise ValueError('%s: MXNet\'s %s refuses these settings (%s). %s'
                         % (where, kind, err or type(err).__name__, hint)) from None
    if kind == 'MultiFactorScheduler' and fields['cur_step_ind'] > len(fields['step']):
        raise ValueError('%s: cur_step_ind %d is past the %d steps. %s'
                         % (where, fields['cur_step_ind'], len(fields['step']), hint))
    vars(sched).update(fields)
    return sched


_REFERENCE_ARGS = {'FactorScheduler': {'step': 1}, 'MultiFactorScheduler': {'step': [1]},
                   'PolyScheduler': {'max_update': 1}, 'CosineScheduler': {'max_update': 1}}
