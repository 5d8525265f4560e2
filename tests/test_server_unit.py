"""The masked optimizer on a kvstore server, without processes: fast unit tests of server.py.

* Which arrays are split across servers, at the boundary: MXNet 1.9.1 splits an array of
  ``size >= MXNET_KVSTORE_BIGARRAY_BOUND`` elements (``src/kvstore/kvstore_dist.h``:
  ``EncodeDefaultKey`` keeps ``num_arr_elems < bigarray_bound_`` whole, ``EncodeRowSparseKey``
  partitions when ``total_num_rows * unit_len >= bigarray_bound_``). Tested at bound - 1,
  bound, bound + 1, for the decision function and for the shapes a server's plan accepts.
* Unpickling on a server: the worker pickles the optimizer through MXNet's own
  ``KVStore.set_optimizer`` (a dist kvstore stand-in that records what it would send), and a
  server unpickles it through MXNet's own ``KVStoreServer`` controller (with a stand-in
  kvstore), in this process with ``DMLC_ROLE=server``. ``Masked.__setstate__`` must attach the
  server side, and the unpickled optimizer must mask flat keys (whole and split) exactly.

The slow end-to-end runs with real processes are in test_dist.py.
"""
import types

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits
from dist_kv import RecordingDistKV
from mxnet.kvstore import kvstore_server
from mxnet.kvstore.kvstore import KVStore

import masked_opt as mo
from masked_opt import server
from masked_opt.server import DEFAULT_BIGARRAY_BOUND, ServerSide, is_split, part_range

# ------------------------------------------------ the big-array bound

@pytest.mark.parametrize('bound', [16, 1000, DEFAULT_BIGARRAY_BOUND])
def test_is_split_at_the_bound_like_kvstore_dist(bound):
    assert [is_split(n, bound, 2) for n in (bound - 1, bound, bound + 1)] == [False, True, True]
    assert [is_split(n, bound, 3) for n in (bound - 1, bound, bound + 1)] == [False, True, True]
    # One server: the single part is the whole array.
    assert not any(is_split(n, bound, 1) for n in (bound - 1, bound, bound + 1))


BOUND = 24


def _dense_side(size, rank):
    return ServerSide({'shapes': {'w': ((size,), 'default')}, 'bound': BOUND}, rank, 2)


@pytest.mark.parametrize('size', [BOUND - 1, BOUND, BOUND + 1])
@pytest.mark.parametrize('rank', [0, 1])
def test_dense_plan_at_the_bound(size, rank):
    """A server holds part ``rank`` of an array of ``size >= bound`` elements, else all of it."""
    opt = mo.Masked('sgd', masks={'w': mo.train_rows_from(15)}, param_idx2name={0: 'w'})
    begin, end = part_range(size, 2, rank) if size >= BOUND else (0, size)
    plan = _dense_side(size, rank).plan(opt, 0, mx.nd.zeros((end - begin,)))
    want = [i - begin for i in range(max(begin, 15), end)]    # local trainable positions
    assert plan.row_ids.tolist() == want
    # The other layout is a mismatch the server reports (shifted keys, another bound).
    other = size if size >= BOUND else part_range(size, 2, rank)[1] - part_range(size, 2,
                                                                                  rank)[0]
    with pytest.raises(ValueError, match='MXNET_KVSTORE_BIGARRAY_BOUND'):
        _dense_side(size, rank).plan(opt, 0, mx.nd.zeros((other,)))


@pytest.mark.parametrize('rows', [BOUND - 1, BOUND, BOUND + 1])
def test_row_sparse_plan_at_the_bound(rows):
    """row_sparse (SparseEmbedding) tables: split by rows when rows * row length >= bound."""
    opt = mo.Masked('sgd', masks={'w': mo.train_rows_from(5)}, param_idx2name={0: 'w'})
    side = ServerSide({'shapes': {'w': ((rows, 1), 'row_sparse')}, 'bound': BOUND}, 1, 2)
    split = rows >= BOUND
    begin, end = server.row_part_range(rows, 2, 1) if split else (0, rows)
    side.plan(opt, 0, mx.nd.zeros((end - begin, 1)))          # accepted
    with pytest.raises(ValueError, match='MXNET_KVSTORE_BIGARRAY_BOUND'):
        side.plan(opt, 0, mx.nd.zeros((rows if split else end - begin - 1, 1)))


# ------------------------------------------------ unpickling on a server

SHAPES = {'emb_weight': (20, 4), 'item_weight': (6, 2), 'out_bias': (4,)}
MASKS = {'emb_weight': mo.train_rows_from(15), 'item_weight': mo.freeze_rows([0, 5])}
HYPER = dict(learning_rate=0.1, momentum=0.9, wd=0.01, rescale_grad=0.5)


class _Died(Exception):
    """What server.die raises here instead of ending the test process."""


@pytest.fixture
def no_exit(monkeypatch):
    def die(message):
        raise _Died(message)
    monkeypatch.setattr(server, 'die', die)


def _sent_by_worker(bound):
    """The optimizer text a worker's ``KVStore.set_optimizer`` sends, via MXNet's own code."""
    params = {i: mx.gluon.Parameter(name, shape=shape) for i, (name, shape) in
              enumerate(sorted(SHAPES.items()))}     # Gluon's keys: name-sorted positions
    opt = mo.Masked('sgd', masks=MASKS, param_dict=params, **HYPER)
    kv = RecordingDistKV()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('MXNET_KVSTORE_BIGARRAY_BOUND', str(bound))
        mp.delenv('DMLC_ROLE', raising=False)
        KVStore.set_optimizer(kv, opt)
    (head, body), = kv.sent
    assert head == 0                                  # kController: "set the optimizer"
    return body, {p.name: i for i, p in params.items()}


def _unpickled_on_server(monkeypatch, body, rank, num_servers=2):
    """Run MXNet's server controller on ``body`` as server ``rank``; the optimizer it sets."""
    monkeypatch.setenv('DMLC_ROLE', 'server')
    monkeypatch.setenv('DMLC_NUM_SERVER', str(num_servers))
    got = []
    store = types.SimpleNamespace(rank=rank, set_optimizer=got.append)
    srv = kvstore_server.KVStoreServer.__new__(kvstore_server.KVStoreServer)
    srv.kvstore, srv.handle, srv.init_logginig = store, None, True
    srv._controller()(0, body.encode('utf-8'), None)  # what ps-lite calls with the command
    (opt,), = [got]
    return opt


def _step_flat(opt, key, weight, grads):
    """Updates as a server runs them: flat arrays, an Updater, one key per call."""
    updater = mx.optimizer.get_updater(opt)
    w = mx.nd.array(weight)
    for g in grads:
        updater(key, mx.nd.array(g), w)
    return w.asnumpy()


def _plain_sgd(weight, grads):
    return _step_flat(mx.optimizer.SGD(**HYPER), 0, weight, grads)


@pytest.mark.usefixtures('no_exit')
@pytest.mark.parametrize('bound, rank', [(DEFAULT_BIGARRAY_BOUND, 0), (40, 1), (40, 0)])
def test_unpickled_on_a_server_the_optimizer_attaches_its_server_side(monkeypatch, bound,
                                                                      rank):
    body, keys = _sent_by_worker(bound)
    assert body.isascii()
    opt = _unpickled_on_server(monkeypatch, body, rank)
    assert isinstance(opt, mo.Masked)
    side = opt.__dict__.get('_server')
    assert isinstance(side, ServerSide), 'Masked.__setstate__ did not attach the server side'
    assert side.rank == rank and side.num_servers == 2 and side.bound == bound
    assert side.shapes['emb_weight'] == ((20, 4), 'default')

    rng = np.random.RandomState(7)
    for name, shape in SHAPES.items():
        size = int(np.prod(shape))
        begin, end = part_range(size, 2, rank) if size >= bound else (0, size)
        full = rng.randn(size).astype(np.float32)
        grads = [rng.randn(size).astype(np.float32) for _ in range(3)]
        grads[0][0] = np.nan                              # at a frozen entry of both masks
        weight, grads = full[begin:end], [g[begin:end] for g in grads]
        got = _step_flat(opt, keys[name], weight, grads)
        want = _plain_sgd(weight, grads)
        if name in MASKS:
            rows, _ = MASKS[name].resolve(shape, name)
            scale = np.repeat(rows, size // shape[0])[begin:end]
        else:
            scale = np.ones(end - begin)
        frozen = scale == 0
        assert_same_bits(got[frozen], weight[frozen], '%s frozen entries' % name)
        assert_same_bits(got[~frozen], want[~frozen], '%s trainable entries' % name)
        assert (as_bits(got[~frozen]) != as_bits(weight[~frozen])).all(), name


@pytest.mark.usefixtures('no_exit')
def test_server_refuses_an_optimizer_not_sent_by_a_worker(monkeypatch):
    """Pickled elsewhere (no shapes captured), a masked optimizer must not train on a server."""
    import pickle
    opt = mo.Masked('sgd', masks=MASKS, param_idx2name=dict(enumerate(sorted(SHAPES))))
    body = pickle.dumps(opt, 0).decode('utf-8')
    with pytest.raises(_Died, match='without the parameter shapes'):
        _unpickled_on_server(monkeypatch, body, 0)


def test_outside_a_server_nothing_is_attached(monkeypatch):
    import pickle
    monkeypatch.delenv('DMLC_ROLE', raising=False)
    opt = mo.Masked('sgd', masks=MASKS, param_idx2name=dict(enumerate(sorted(SHAPES))))
    assert pickle.loads(pickle.dumps(opt)).__dict__.get('_server') is None
