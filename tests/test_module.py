"""C9 with Module: ``fit`` with ``optimizer='masked'`` (by name, as an instance, with ``base`` an
instance), ``init_optimizer`` + ``forward_backward`` + ``update``, and glob mask keys.

The reference is the wrapped optimizer itself, run by hand on the trainable block: each step, the
block of the weight and of Module's gradient is copied out (numpy fancy indexing), and a separate
instance of the base optimizer updates it with its own block-sized state. Gathering and copying
are exact, so the masked Module must match the reference bit for bit, and every frozen entry must
keep its initial bits.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits
from models import forum_mf, mf_iter, ratings

import masked_opt as mo

N_USERS, N_ITEMS, N_OLD, DIM = 20, 16, 10, 8
N_RATINGS, BATCH = 96, 16
MEMBER, BOOK = 'member_embedding_weight', 'book_embedding_weight'

SETTINGS = [
    # SGD has a fused multi-tensor path (aggregate_num > 0): the Updater hands the masked
    # optimizer lists of parameters.
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, id='sgd-mom-wd'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, id='adam-wd'),
]


def _initial_tables():
    rng = np.random.RandomState(7)
    return {MEMBER: rng.uniform(-.5, .5, (N_USERS, DIM)).astype(np.float32),
            BOOK: rng.uniform(-.5, .5, (N_ITEMS, DIM)).astype(np.float32)}


def _data():
    member, book, label = ratings(N_USERS, N_ITEMS, N_RATINGS, seed=5)
    return mf_iter(member, book, label, BATCH)


def _bound_module(init):
    it = _data()
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    mod.init_params(arg_params={k: mx.nd.array(v) for k, v in init.items()})
    return mod, it


def _fit(optimizer, optimizer_params=None, epochs=2):
    init = _initial_tables()
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    mod.fit(_data(), num_epoch=epochs, eval_metric='mse', optimizer=optimizer,
            optimizer_params=optimizer_params,
            arg_params={k: mx.nd.array(v) for k, v in init.items()})
    return init, {k: v.asnumpy() for k, v in mod.get_params()[0].items()}


ROWS_AND_COLS = {BOOK: mo.train_rows_from(N_OLD), MEMBER: mo.freeze_cols([0, 3])}
# Trainable (rows, cols) of each masked table, written out by hand for the reference.
BLOCKS = {BOOK: (np.arange(N_OLD, N_ITEMS), np.arange(DIM)),
          MEMBER: (np.arange(N_USERS), np.array([1, 2, 4, 5, 6, 7]))}


def _assert_frozen_and_trained(init, got, blocks):
    for name, (rows, cols) in blocks.items():
        frozen = np.ones(init[name].shape, bool)
        frozen[np.ix_(rows, cols)] = False
        assert_same_bits(init[name][frozen], got[name][frozen], '%s frozen entries' % name)
        assert not np.any(init[name][np.ix_(rows, cols)] == got[name][np.ix_(rows, cols)]), \
            '%s: some trainable entries did not move' % name


@pytest.mark.parametrize('base,params', SETTINGS)
def test_fit_by_name_by_instance_and_with_base_instance_agree(base, params):
    by_name_params = dict(params, base=base, masks=ROWS_AND_COLS)
    init, by_name = _fit('masked', by_name_params)
    _assert_frozen_and_trained(init, by_name, BLOCKS)

    # An instance: Module fills in idx2name; rescale_grad is given as Module would set it.
    _, by_instance = _fit(mo.Masked(base=base, masks=ROWS_AND_COLS, rescale_grad=1.0 / BATCH,
                                    **params))
    inner = mx.optimizer.create(base, rescale_grad=1.0 / BATCH, **params)
    _, with_base_instance = _fit(mo.Masked(base=inner, masks=ROWS_AND_COLS))
    for name in by_name:
        assert_same_bits(by_name[name], by_instance[name], '%s: instance vs name' % name)
        assert_same_bits(by_name[name], with_base_instance[name],
                         '%s: base instance vs name' % name)


def _manual_run(base, params, masks, blocks, epochs=2):
    """Train with init_optimizer/forward_backward/update; check against the block reference."""
    init = _initial_tables()
    mod, it = _bound_module(init)
    mod.init_optimizer(optimizer='masked', optimizer_params=dict(params, base=base, masks=masks))
    names = mod._exec_group.param_names
    ref = mx.optimizer.create(base, rescale_grad=1.0 / BATCH, **params)
    ref_w = {n: mx.nd.array(init[n][np.ix_(*blocks[n])]) for n in blocks}
    # Same index as Module's, so that update counts (Adam's bias correction) agree.
    ref_s = {n: ref.create_state(names.index(n), ref_w[n]) for n in blocks}
    steps = 0
    for _ in range(epochs):
        it.reset()
        for batch in it:
            mod.forward_backward(batch)
            grads = {n: mod._exec_group.grad_arrays[i][0].asnumpy() for i, n in enumerate(names)}
            mod.update()
            for n, (rows, cols) in blocks.items():
                ref.update(names.index(n), ref_w[n], mx.nd.array(grads[n][np.ix_(rows, cols)]),
                           ref_s[n])
            got = {k: v.asnumpy() for k, v in mod.get_params()[0].items()}
            for n, (rows, cols) in blocks.items():
                assert_same_bits(ref_w[n], got[n][np.ix_(rows, cols)],
                                 '%s trainable block, step %d' % (n, steps))
            steps += 1
    _assert_frozen_and_trained(init, got, blocks)
    return init, got


@pytest.mark.parametrize('base,params', SETTINGS)
def test_manual_loop_matches_base_optimizer_on_the_block(base, params):
    _manual_run(base, params, ROWS_AND_COLS, BLOCKS)


@pytest.mark.parametrize('base,params', SETTINGS)
def test_glob_key_masks_every_matching_parameter(base, params):
    blocks = {name: (np.arange(N_OLD, n), np.arange(DIM))
              for name, n in [(MEMBER, N_USERS), (BOOK, N_ITEMS)]}
    _, by_glob = _manual_run(base, params, {'*_embedding_weight': mo.train_rows_from(N_OLD)},
                             blocks)
    _, by_name = _manual_run(base, params, {MEMBER: mo.train_rows_from(N_OLD),
                                            BOOK: mo.train_rows_from(N_OLD)}, blocks)
    for name in blocks:
        assert_same_bits(by_name[name], by_glob[name], name)


def test_exact_name_takes_precedence_over_glob():
    """A parameter keyed by its name and matched by a glob gets the named mask."""
    blocks = {MEMBER: (np.arange(N_USERS), np.array([7])),
              BOOK: (np.arange(N_OLD, N_ITEMS), np.arange(DIM))}
    _manual_run('adam', {'learning_rate': 0.01},
                {'*_weight': mo.train_rows_from(N_OLD), MEMBER: mo.train_cols([7])}, blocks)


def test_plain_data_masks_from_a_config():
    """``{'rows': ..., 'cols': ...}`` with 0/1 scales (list, numpy, NDArray) equals the helpers."""
    rows = np.zeros(N_ITEMS)
    rows[N_OLD:] = 1
    cols = [0, 1, 1, 0, 1, 1, 1, 1]
    config = {BOOK: {'rows': mx.nd.array(rows), 'cols': None},
              MEMBER: {'rows': None, 'cols': cols}}
    _, from_config = _fit('masked', {'base': 'adam', 'learning_rate': 0.01, 'masks': config})
    _, from_helpers = _fit('masked', {'base': 'adam', 'learning_rate': 0.01,
                                      'masks': ROWS_AND_COLS})
    for name in from_config:
        assert_same_bits(from_helpers[name], from_config[name], name)


def test_unmasked_module_run_is_the_wrapped_optimizer():
    """C4 through Module: masks={} gives the bits of the base optimizer alone."""
    params = {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}
    _, masked = _fit('masked', dict(params, base='sgd', masks={}))
    _, plain = _fit('sgd', params)
    for name in plain:
        assert_same_bits(plain[name], masked[name], name)
