"""A masked optimizer inside another optimizer that forwards reads but keeps writes.

Horovod's ``hvd.DistributedOptimizer`` is such a wrapper (``__getattr__`` reads through to the
optimizer inside; ``idx2name``, ``param_dict`` and ``rescale_grad`` written by Module and Trainer
stay on the wrapper). ``Forwarding`` below is that shape without Horovod (its allreduce is the
identity on one process), so the name resolution of :mod:`masked_opt.wrappers` is tested here in
one process, on the bits; ``tests/test_horovod.py`` runs the real thing with 2 processes.
"""
import threading

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits, state_arrays
from models import GluonMF, forum_mf, mf_iter, ratings

import masked_opt as mo
from masked_opt.wrappers import find_masked, names_from

N_USERS, N_ITEMS, N_OLD, DIM, BATCH = 12, 10, 6, 4, 8
MEMBER, BOOK = 'member_embedding_weight', 'book_embedding_weight'


class Forwarding(mx.optimizer.Optimizer):
    """Horovod's DistributedOptimizer without the allreduce: reads go to the optimizer inside,
    writes stay here."""

    def __init__(self, optimizer):  # pylint: disable=super-init-not-called
        self._optimizer = optimizer

    def __getattr__(self, item):
        return getattr(self._optimizer, item)

    def create_state_multi_precision(self, index, weight):
        return self._optimizer.create_state_multi_precision(index, weight)

    def update(self, index, weight, grad, state):
        self._optimizer.update(index, weight, grad, state)

    def update_multi_precision(self, index, weight, grad, state):
        self._optimizer.update_multi_precision(index, weight, grad, state)


class Threaded(Forwarding):
    """A wrapper that runs the inner optimizer in another thread: its frames are not among
    the masked optimizer's callers."""

    def _in_thread(self, fn, *args):
        out, err = [], []

        def run():
            try:
                out.append(fn(*args))
            except Exception as e:  # pylint: disable=broad-except
                err.append(e)
        t = threading.Thread(target=run)
        t.start()
        t.join()
        if err:
            raise err[0]
        return out[0]

    def create_state_multi_precision(self, index, weight):
        return self._in_thread(self._optimizer.create_state_multi_precision, index, weight)

    def update_multi_precision(self, index, weight, grad, state):
        self._in_thread(self._optimizer.update_multi_precision, index, weight, grad, state)


def _masks():
    return {BOOK: mo.train_rows_from(N_OLD), MEMBER: mo.train_cols([DIM - 1])}


def _module(optimizer, steps=3):
    rng = np.random.RandomState(3)
    init = {MEMBER: mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))),
            BOOK: mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM)))}
    it = mf_iter(*ratings(N_USERS, N_ITEMS, BATCH * steps, seed=4), BATCH)
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=('member', 'book'),
                        label_names=('label',))
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(arg_params=init)
    mod.init_optimizer(kvstore=None, optimizer=optimizer)
    for batch in it:
        mod.forward_backward(batch)
        mod.update()
    return {k: v.asnumpy() for k, v in init.items()}, {k: v.asnumpy() for k, v in
                                                      mod.get_params()[0].items()}


@pytest.mark.parametrize('base,params', [
    ('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}),
    ('adam', {'learning_rate': 0.05, 'wd': 1e-3}),
])
def test_module_wrapped_equals_unwrapped(base, params):
    """Module writes idx2name on the wrapper; the Masked inside finds it among its callers and
    trains exactly as when Module is given the Masked itself."""
    init, direct = _module(mo.Masked(base=base, masks=_masks(), rescale_grad=1 / BATCH,
                                     **params))
    wrapped_opt = Forwarding(mo.Masked(base=base, masks=_masks(), rescale_grad=1 / BATCH,
                                       **params))
    _, wrapped = _module(wrapped_opt)
    assert 'idx2name' in vars(wrapped_opt)            # the write stayed on the wrapper
    assert not wrapped_opt._optimizer.base.idx2name   # ... and never reached the inner one
    for name in (MEMBER, BOOK):
        assert_same_bits(direct[name], wrapped[name], name)
    assert_same_bits(init[BOOK][:N_OLD], wrapped[BOOK][:N_OLD], 'frozen rows')
    assert_same_bits(init[MEMBER][:, :-1], wrapped[MEMBER][:, :-1], 'frozen columns')
    assert changed_bits(init[BOOK][N_OLD:], wrapped[BOOK][N_OLD:]) > 0
    assert changed_bits(init[MEMBER][:, -1], wrapped[MEMBER][:, -1]) > 0


def _gluon(make_optimizer, masks_of, steps=3, batch_size=1):
    mx.random.seed(11)   # the same initial weights in every run
    net = GluonMF(N_USERS, N_ITEMS, DIM)
    net.initialize(mx.init.Uniform(0.5))
    net(mx.nd.array([0]), mx.nd.array([0]))
    init = {p.name: p.data().asnumpy() for p in net.collect_params().values()}
    trainer = mx.gluon.Trainer(net.collect_params(), make_optimizer(masks_of(net)),
                               kvstore=None)
    member, book, label = ratings(N_USERS, N_ITEMS, BATCH * steps, seed=4)
    for s in range(steps):
        sl = slice(s * BATCH, (s + 1) * BATCH)
        with mx.autograd.record():
            loss = ((net(mx.nd.array(member[sl]), mx.nd.array(book[sl]))
                     - mx.nd.array(label[sl])) ** 2).sum()
        loss.backward()
        trainer.step(batch_size)   # sets rescale_grad; a wrapper keeps it (see below)
    return init, {p.name: p.data().asnumpy() for p in net.collect_params().values()}, trainer


def test_gluon_trainer_wrapped_masks_by_parameter():
    """gluon.Trainer writes param_dict on the wrapper; masks keyed by Parameter and by glob."""
    def masks_of(net):
        return {net.book.weight: mo.train_rows_from(N_OLD), '*user_weight': mo.train_cols([0])}

    def direct(masks):
        return mo.Masked(base='sgd', learning_rate=0.1, momentum=0.9, masks=masks)

    init, ref, _ = _gluon(direct, masks_of)
    _, got, trainer = _gluon(lambda m: Forwarding(direct(m)), masks_of)
    assert 'param_dict' in vars(trainer._optimizer)
    for name in ref:
        assert_same_bits(ref[name], got[name], name)
    assert_same_bits(init['mf_book_weight'][:N_OLD], got['mf_book_weight'][:N_OLD], 'frozen')
    assert_same_bits(init['mf_user_weight'][:, 1:], got['mf_user_weight'][:, 1:], 'frozen')
    assert changed_bits(init['mf_book_weight'][N_OLD:], got['mf_book_weight'][N_OLD:]) > 0


def test_gluon_rescale_grad_stays_with_the_wrapper():
    """Only names are taken from the wrapper: the rescale_grad that Trainer.step(8) writes on
    it is not applied, exactly as for a plain optimizer in the same wrapper (Horovod's
    DistributedOptimizer under gluon.Trainer): both train as with rescale_grad 1."""
    def masks_of(net):
        return {net.book.weight: mo.train_rows_from(N_OLD)}

    def masked(m):
        return mo.Masked(base='sgd', learning_rate=0.1, masks=m)

    def plain(_):
        return mx.optimizer.SGD(learning_rate=0.1)

    for make in (masked, plain):
        _, ref, _ = _gluon(make, masks_of, batch_size=1)
        _, got, trainer = _gluon(lambda m, make=make: Forwarding(make(m)), masks_of,
                                 batch_size=BATCH)
        assert vars(trainer._optimizer)['rescale_grad'] == 1 / BATCH   # kept by the wrapper
        assert trainer._optimizer._optimizer.rescale_grad == 1.0      # what the update uses
        for name in ref:
            assert_same_bits(ref[name], got[name], '%s, %s' % (make.__name__, name))


def test_no_names_anywhere_raises_before_any_write():
    """Never by position: without a name for an index, a ValueError that says how to hand the
    names over, and nothing is written."""
    opt = Forwarding(mo.Masked(base='sgd', learning_rate=0.1, masks={BOOK: mo.train_rows([1])}))
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.ones((3, 2))
    with pytest.raises(ValueError, match='cannot name parameter index 0.*names_from'):
        updater(0, mx.nd.ones((3, 2)), w)
    assert (w.asnumpy() == 1).all()


def test_wrapper_in_another_thread_needs_names_from():
    opt = Threaded(mo.Masked(base='sgd', masks=_masks(), learning_rate=0.1,
                             rescale_grad=1 / BATCH))
    with pytest.raises(ValueError, match='names_from'):
        _module(opt)
    masks = _masks()
    opt = Threaded(mo.Masked(base='sgd', masks=masks, learning_rate=0.1, rescale_grad=1 / BATCH))
    init, direct = _module(mo.Masked(base='sgd', masks=_masks(), learning_rate=0.1,
                                     rescale_grad=1 / BATCH))
    # Hand the names over after init_optimizer (here: by a Module that names them first).
    orig = mx.mod.Module.init_optimizer

    def init_then_hand_over(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        assert names_from(opt) is opt._optimizer
    mx.mod.Module.init_optimizer = init_then_hand_over
    try:
        _, got = _module(opt)
    finally:
        mx.mod.Module.init_optimizer = orig
    for name in (MEMBER, BOOK):
        assert_same_bits(direct[name], got[name], name)


def test_names_from_errors():
    with pytest.raises(ValueError, match='holds no masked optimizer'):
        names_from(Forwarding(mx.optimizer.SGD()))
    with pytest.raises(ValueError, match='holds no parameter names yet'):
        names_from(Forwarding(mo.Masked(base='sgd')))
    wrapper = Forwarding(mo.Masked(base='sgd', masks={'typo_weight': mo.train_rows([0])}))
    wrapper.idx2name = {0: BOOK}
    with pytest.raises(ValueError, match="mask key 'typo_weight' matches no parameter"):
        names_from(wrapper)


def test_two_maps_that_disagree_raise():
    inner = mo.Masked(base='sgd', masks={'*_weight': mo.train_rows([0])},
                      param_idx2name={0: MEMBER})
    wrapper = Forwarding(inner)
    wrapper.idx2name = {0: BOOK}
    with pytest.raises(ValueError, match='two different index -> name maps'):
        names_from(wrapper)


def test_find_masked_through_two_wrappers():
    masked = mo.Masked(base='adam')
    assert find_masked(Forwarding(Forwarding(masked))) is masked
    assert find_masked(masked) is masked


def _phases(wrap, tmp_path):
    """Module, Adam: phase 1 trains book rows 6..9 and saves the optimizer states; phase 2
    trains rows 4..7 (a block of the same shape, other rows) from them."""
    rng = np.random.RandomState(3)
    init = {MEMBER: mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))),
            BOOK: mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM)))}
    path = str(tmp_path / ('wrapped.states' if wrap else 'direct.states'))
    params = init
    for phase, rows in ((1, range(6, 10)), (2, range(4, 8))):
        opt = mo.Masked(base='adam', learning_rate=0.05, rescale_grad=1 / BATCH,
                        masks={BOOK: mo.train_rows(rows), MEMBER: mo.freeze_rows(range(N_USERS))})
        it = mf_iter(*ratings(N_USERS, N_ITEMS, BATCH * 3, seed=phase), BATCH)
        mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=('member', 'book'),
                            label_names=('label',))
        mod.bind(it.provide_data, it.provide_label)
        mod.init_params(arg_params={k: v.copy() for k, v in params.items()})
        mod.init_optimizer(kvstore=None, optimizer=Forwarding(opt) if wrap else opt)
        if phase == 2:
            mod.load_optimizer_states(path)
        for batch in it:
            mod.forward_backward(batch)
            mod.update()
        mod.save_optimizer_states(path)
        params = mod.get_params()[0]
    states = {mod._exec_group.param_names[i]: [a.asnumpy() for a in state_arrays(s)]
              for i, s in mod._updater.states.items() if s is not None}
    return {k: v.asnumpy() for k, v in params.items()}, states


def test_module_wrapped_states_follow_their_rows_into_the_next_phase(tmp_path):
    """Under a wrapper, MXNet's get_updater gets the wrapper, not the Masked: the updater
    must still save the states' layouts and match them to the next phase's mask. The
    regression: a plain Updater loaded the block as it was, so rows 6, 7 got the moments of
    rows 8, 9 -- silently, the block having the same shape."""
    direct, direct_states = _phases(False, tmp_path)
    wrapped, wrapped_states = _phases(True, tmp_path)
    for name in (MEMBER, BOOK):
        assert_same_bits(direct[name], wrapped[name], name)
    assert direct_states.keys() == wrapped_states.keys()
    for name, arrays in direct_states.items():
        for k, (a, b) in enumerate(zip(arrays, wrapped_states[name], strict=True)):
            assert_same_bits(a, b, '%s state[%d]' % (name, k))
    assert isinstance(mx.optimizer.get_updater(Forwarding(mo.Masked(base='sgd'))),
                      mo.states.MaskedUpdater)


def test_a_state_files_optimizer_inside_a_wrapper_becomes_the_wrapped_one():
    """Gluon's state file holds the Trainer's optimizer, which may be a wrapper: what the live
    Masked adopts from it is the optimizer doing the arithmetic, never a second wrapper."""
    from masked_opt.states import _take_file_optimizer
    live = mo.Masked(base='sgd', masks={BOOK: mo.train_rows_from(N_OLD)})
    plain = mx.optimizer.Adam(learning_rate=0.01)
    _take_file_optimizer(live, Forwarding(plain))         # an unmasked run, wrapped
    assert live.base is plain and live.masks.keys() == {BOOK}
    masked_adam = mo.Masked(base='adam', masks={MEMBER: mo.train_cols([0])})
    _take_file_optimizer(live, Forwarding(masked_adam))   # masked, wrapped: its base, live masks
    assert live.base is masked_adam.base and live.masks.keys() == {BOOK}
    two = Forwarding(plain)
    two.other = mx.optimizer.SGD()
    with pytest.raises(ValueError, match='wraps several optimizers'):
        _take_file_optimizer(live, two)
