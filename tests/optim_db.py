"""The one table of MXNet's registered optimizers that optimizer-parametrised tests use.

Modelled on PyTorch's ``optim_db`` (``torch/testing/_internal/common_optimizers.py``): one entry
per optimizer MXNet 1.9.1 registers, with the settings that change its update rule and the
limits of the optimizer itself, so that every test runs the same optimizers and skips the same
cases for the same documented reason. ``test_exact_all_optimizers``'s
``test_every_registered_optimizer_is_covered`` keeps it complete.
"""
from collections import namedtuple

import pytest

OptimInfo = namedtuple('OptimInfo', 'configs sparse_configs')
OptimInfo.__doc__ = """``configs``: the settings each optimizer runs with in the dense tests
(momentum where it has one, its variants, its options that change the update rule);
``sparse_configs``: the ones the row_sparse tests run (fewer: those cover every step strategy
per optimizer, each with a hypothesis search)."""

OPTIM_DB = {
    'sgd': OptimInfo([{}, {'momentum': 0.9}], [{}, {'momentum': 0.9}]),
    # deprecated alias of SGD, still registered
    'ccsgd': OptimInfo([{'momentum': 0.9}], [{'momentum': 0.9}]),
    'nag': OptimInfo([{}, {'momentum': 0.9}], [{'momentum': 0.9}]),
    'adam': OptimInfo([{}], [{}]),
    'adagrad': OptimInfo([{}], [{}]),
    'rmsprop': OptimInfo([{'centered': False}, {'centered': True, 'clip_weights': 0.8}],
                         [{'centered': False}, {'centered': True}]),
    'adadelta': OptimInfo([{}], [{}]),
    'adamax': OptimInfo([{}], [{}]),
    'nadam': OptimInfo([{}], [{}]),
    'ftml': OptimInfo([{}], [{}]),
    'ftrl': OptimInfo([{}], [{}]),
    'signum': OptimInfo([{'momentum': 0.9, 'wd_lh': 0.01}, {'momentum': 0.0}],
                        [{'momentum': 0.9, 'wd_lh': 0.01}]),
    'sgld': OptimInfo([{}], [{}]),
    # momentum > 0 is broken in MXNet itself: test_dcasgd_momentum_...
    'dcasgd': OptimInfo([{}], [{}]),
    'lamb': OptimInfo([{}, {'bias_correction': False, 'lower_bound': 1e-3, 'upper_bound': 0.5}],
                      [{}]),
    'lars': OptimInfo([{'momentum': 0.9}, {'eta': 0.05}],   # eta: a step fp16 can see
                      [{'momentum': 0.9}]),
    'lbsgd': OptimInfo([{'momentum': 0.9}, {'momentum': 0.9, 'batch_scale': 2,
                                            'warmup_strategy': 'lars'}],
                       [{'momentum': 0.9}]),
    'groupadagrad': OptimInfo([{}], [{}]),
    # MXNet's own test optimizer: w += rescale_grad * g, state = w
    'test': OptimInfo([{}], [{}]),
}

#: ``{name: configs}`` of the dense tests.
CONFIGS = {name: info.configs for name, info in OPTIM_DB.items()}
#: ``{name: configs}`` of the row_sparse tests.
SPARSE_CONFIGS = {name: info.sparse_configs for name, info in OPTIM_DB.items()}

# Registered names that are not optimizers to wrap.
NOT_WRAPPED = {'masked': "masked_opt's own wrapper; Masked(base='masked') is rejected"}

# Optimizers that fail on float64 weights *without* masked_opt: their state is created as
# float32 whatever the weight's dtype, and MXNet's ops refuse mixed dtypes.
# test_exact_all_optimizers' test_float64_fails_without_masked_opt_too proves each one.
NO_FLOAT64 = {'adagrad', 'rmsprop', 'adadelta', 'ftrl', 'groupadagrad'}

# GroupAdaGrad keeps one accumulator per row: its create_state asserts a 2-D weight, and its
# update asserts wd == 0. These are limits of the optimizer itself, not of the mask.
ONLY_2D = {'groupadagrad'}
NO_WD = {'groupadagrad'}

# Run with float16 weights and multi_precision (a float32 master copy) in the row_sparse tests;
# the rest run float32 there.
MULTI_PRECISION = {'sgd', 'adam'}


def case_ids(table, order=None):
    """``pytest.param(name, config)`` for every config of ``table``, with ids ``name-k``;
    ``order=sorted`` sorts the names."""
    names = order(table) if order else list(table)
    return [pytest.param(name, config, id='%s-%d' % (name, k))
            for name in names for k, config in enumerate(table[name])]
