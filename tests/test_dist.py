"""The dist kvstore with real processes: 1 scheduler, 1-2 servers, 2 workers on 127.0.0.1.

Each job runs ``dist_scripts/mf_worker.py`` through :func:`masked_opt.launch.launch` (every
process has a hard timeout; the launcher stops the rest after a failure) and checks, on the
bits, that frozen entries are unchanged on every worker and that the trainable entries moved
and agree between the workers. The loud-failure tests provoke each way a server could train on
silently and check that the job stops with a non-zero exit code and a message saying what to
fix. The fast tests at the end check the shard arithmetic in-process.
"""
import json
import os
import pickle
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits
from hypothesis import given
from hypothesis import strategies as st

import masked_opt as mo
from masked_opt import server
from masked_opt.launch import launch

HERE = os.path.dirname(os.path.abspath(__file__))
# Every process imports masked_opt from this checkout, not from wherever it is installed.
CHECKOUT = os.pathsep.join([os.path.dirname(HERE)] + [
    p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
WORKER = os.path.join(HERE, 'dist_scripts', 'mf_worker.py')
TIMEOUT = 150  # seconds for a whole job; a healthy one takes ~10-20 s on 2 busy cores
NAMES = {'module': ('book_embedding_weight', 'member_embedding_weight'),
         'gluon': ('mf_item_weight', 'mf_user_weight')}
DEFAULTS = {'n_items': 40, 'n_users': 12, 'dim': 4, 'n_old': 25, 'mask': 'rows_cols',
            'update_on_kvstore': True}


def run_job(cfg, tmp_path, num_servers=1, env=None, server_cmd=None, grace=3.0):
    cfg = dict(DEFAULTS, **cfg)
    job_env = {'OMP_NUM_THREADS': '1', server.LOG_ENV: '1', 'PYTHONPATH': CHECKOUT}
    job_env.update(env or {})
    kwargs = {'server_cmd': server_cmd} if server_cmd else {}
    procs = launch([sys.executable, WORKER, json.dumps(cfg), str(tmp_path)], num_workers=2,
                   num_servers=num_servers, env=job_env, timeout=TIMEOUT, grace=grace,
                   **kwargs)
    return cfg, procs


def report(procs):
    return '\n'.join('--- %s: exit %s%s\n%s' % (p.name, p.returncode,
                                                ' (stopped: %s)' % p.stopped if p.stopped else '',
                                                p.output[-3000:]) for p in procs)


def load_workers(tmp_path, procs):
    assert all(p.returncode == 0 for p in procs), report(procs)
    files = sorted(tmp_path.glob('worker*.npz'))
    assert [f.name for f in files] == ['worker0.npz', 'worker1.npz'], report(procs)
    return [dict(np.load(f)) for f in files]


def check_masked_training(cfg, tmp_path, procs):
    """Frozen entries unchanged on every worker; trainable ones moved and agree (bits)."""
    workers = load_workers(tmp_path, procs)
    item, user = NAMES[cfg['api']]
    n_old, last = cfg['n_old'], cfg['dim'] - 1
    for rank, w in enumerate(workers):
        assert bool(w['update_on_kvstore']) == cfg['update_on_kvstore']
        init_item, final_item = w['init:' + item], w['final:' + item]
        assert_same_bits(init_item[:n_old], final_item[:n_old], 'frozen rows, worker %d' % rank)
        assert changed_bits(init_item[n_old:], final_item[n_old:]) > 0, 'no trainable row moved'
        init_user, final_user = w['init:' + user], w['final:' + user]
        if cfg['mask'] == 'rows_cols':
            assert_same_bits(init_user[:, :last], final_user[:, :last],
                             'frozen columns, worker %d' % rank)
            assert changed_bits(init_user[:, last], final_user[:, last]) > 0
        else:
            assert changed_bits(init_user, final_user) > 0
    for name in (item, user):
        assert_same_bits(workers[0]['final:' + name], workers[1]['final:' + name],
                         '%s: worker 0 vs worker 1' % name)
    return workers


def server_parts(procs, name):
    """``{(begin, end)}`` of ``name`` as logged by the servers (server.LOG_ENV)."""
    parts = set()
    for p in procs:
        if p.role != 'server':
            continue
        for line in p.output.splitlines():
            if line.startswith('masked_opt server') and "'%s'" % name in line:
                begin, end = line.split('[')[-1].split(')')[0].split(',')
                parts.add((int(begin), int(end)))
    return parts


# ------------------------------------------------------------- training on the servers

MATRIX = [
    # api, kvstore, base optimizer, optimizer by, update_on_kvstore
    ('module', 'dist_sync', 'sgd', 'name', True),
    ('module', 'dist_sync', 'adam', 'instance', True),
    ('module', 'dist_sync', 'sgd', 'instance', False),
    ('module', 'dist_async', 'adam', 'name', True),
    ('gluon', 'dist_sync', 'adam', 'name', True),
    ('gluon', 'dist_sync', 'sgd', 'instance', True),
    ('gluon', 'dist_sync', 'adam', 'instance', False),
    ('gluon', 'dist_async', 'sgd', 'name', True),
]


@pytest.mark.slow
@pytest.mark.parametrize('api,kvstore,base,by,update_on_kvstore', MATRIX)
def test_dist_training(api, kvstore, base, by, update_on_kvstore, tmp_path):
    cfg, procs = run_job({'api': api, 'kvstore': kvstore, 'base': base, 'by': by,
                          'update_on_kvstore': update_on_kvstore}, tmp_path)
    check_masked_training(cfg, tmp_path, procs)
    item = NAMES[api][0]
    if update_on_kvstore:
        # Gluon's server side has no names: they travelled inside the pickled optimizer.
        assert server_parts(procs, item) == {(0, 40 * 4)}, report(procs)
    else:
        assert server_parts(procs, item) == set()  # the servers only summed gradients


@pytest.mark.slow
@pytest.mark.parametrize('api,kvstore,base', [('module', 'dist_sync', 'adam'),
                                              ('gluon', 'dist_async', 'sgd')])
def test_dense_tables_split_across_two_servers(api, kvstore, base, tmp_path):
    """Items 41x3 = 123 elements cut at 62: row 20 straddles the servers, rows 0..19 stay
    frozen. Users 40x3 = 120 elements cut at 60 (row 20), with a column mask."""
    cfg, procs = run_job({'api': api, 'kvstore': kvstore, 'base': base, 'n_items': 41,
                          'n_users': 40, 'dim': 3, 'n_old': 20}, tmp_path, num_servers=2,
                         env={'MXNET_KVSTORE_BIGARRAY_BOUND': '100'})
    check_masked_training(cfg, tmp_path, procs)
    item, user = NAMES[api]
    assert server_parts(procs, item) == {(0, 62), (62, 123)}, report(procs)
    assert 62 % 3 != 0  # the cut is inside a row
    assert server_parts(procs, user) == {(0, 60), (60, 120)}, report(procs)


@pytest.mark.slow
@pytest.mark.parametrize('api,base', [('module', 'sgd'), ('gluon', 'adam')])
def test_sparse_embedding_split_across_two_servers(api, base, tmp_path):
    """A row_sparse weight split by rows: rows 0..20 on one server, 21..40 (local ids) on the
    other; the mask's rows 20.. start inside the first part."""
    cfg, procs = run_job({'api': api, 'base': base, 'sparse': 'sparse_embedding',
                          'n_items': 41, 'n_users': 40, 'dim': 3, 'n_old': 20}, tmp_path,
                         num_servers=2, env={'MXNET_KVSTORE_BIGARRAY_BOUND': '100'})
    workers = check_masked_training(cfg, tmp_path, procs)
    assert server_parts(procs, NAMES[api][0]) == {(0, 21), (21, 41)}, report(procs)
    assert server_parts(procs, NAMES[api][1]) == {(0, 60), (60, 120)}, report(procs)
    # Lazy update: only trainable rows that appeared in a batch moved.
    item = NAMES[api][0]
    moved = np.flatnonzero((workers[0]['init:' + item] != workers[0]['final:' + item]).any(1))
    assert moved.min() >= cfg['n_old']


@pytest.mark.slow
@pytest.mark.parametrize('api', ['gluon', 'module'])
def test_sparse_embedding_trained_on_dist_servers_grows_from_the_servers_table(api, tmp_path):
    """Issue 16: a SparseEmbedding's trained table lives on the servers; the layer holds only
    the rows of its last batch. Grown on each worker right after training, the old rows are the
    servers' table, bit for bit, and both workers grow the same table."""
    cfg, procs = run_job({'api': api, 'base': 'adam', 'sparse': 'sparse_embedding',
                          'grow': True}, tmp_path)
    workers = check_masked_training(cfg, tmp_path, procs)
    item = NAMES[api][0]
    for rank, w in enumerate(workers):
        grown = w['final:grown']
        assert grown.shape == (cfg['n_items'] + 3, cfg['dim'])
        assert_same_bits(w['final:' + item], grown[:cfg['n_items']],
                         'worker %d: old rows of the grown table vs the servers' % rank)
    assert_same_bits(workers[0]['final:grown'], workers[1]['final:grown'], 'worker 0 vs 1')


# ------------------------------------------------------------- loud failures

def assert_stopped_loudly(procs, role, code, *phrases):
    failed = [p for p in procs if p.role == role and p.returncode == code]
    assert failed, 'expected a %s to exit with %s\n%s' % (role, code, report(procs))
    for phrase in phrases:
        assert phrase in failed[0].output, report(procs)
    for p in procs:  # nobody finished training as if nothing happened
        if p.role == 'worker':
            assert p.returncode != 0 or 'done' not in p.output, report(procs)


@pytest.mark.slow
def test_package_missing_on_a_server_stops_the_job(tmp_path):
    blocked = "import sys; sys.modules['masked_opt'] = None; import mxnet"
    _, procs = run_job({'api': 'gluon'}, tmp_path,
                       server_cmd=[sys.executable, '-c', blocked])
    assert_stopped_loudly(procs, 'server', server.EXIT_CODE, 'masked_opt cannot be imported',
                          'Install masked_opt')
    assert not list(tmp_path.glob('worker*.npz'))


@pytest.mark.slow
def test_mask_that_does_not_fit_the_server_array_stops_the_job(tmp_path):
    """The worker records a wrong full shape (41 rows for a 40-row table)."""
    _, procs = run_job({'api': 'module', 'tamper_shape': True}, tmp_path)
    assert_stopped_loudly(procs, 'server', server.EXIT_CODE, "'book_embedding_weight'",
                          'but holds shape (160,)')


@pytest.mark.slow
def test_key_order_mismatch_stops_the_job(tmp_path):
    """Another string key initialised on the kvstore first shifts every Module key by one."""
    _, procs = run_job({'api': 'module', 'extra_key': True}, tmp_path)
    assert_stopped_loudly(procs, 'server', server.EXIT_CODE, 'key order does not match')


@pytest.mark.slow
@pytest.mark.parametrize('api', ['module', 'gluon'])
def test_embedding_sparse_grad_is_refused_on_the_worker(api, tmp_path):
    _, procs = run_job({'api': api, 'sparse': 'sparse_grad'}, tmp_path)
    assert_stopped_loudly(procs, 'worker', 1, 'SparseEmbedding', 'row_sparse gradient')


# ------------------------------------------------------------- fast: shard arithmetic

@given(st.integers(1, 60), st.integers(1, 5), st.integers(1, 3), st.integers(1, 4),
       st.data())
def test_element_scales_of_all_parts_tile_the_full_mask(rows, cols, depth, servers, data):
    shape = (rows, cols, depth)
    r = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=rows,
                                    max_size=rows)))
    c = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=cols,
                                    max_size=cols)))
    full = (r[:, None, None] * c[None, :, None] * np.ones(shape)).ravel()
    size = full.size
    pieces, begin = [], 0
    for rank in range(servers):
        b, e = server.part_range(size, servers, rank)
        assert b == begin
        scales = server.element_scales(shape, r, c, b, e)
        pieces.append(np.ones(e - b) if scales is None else scales)
        begin = e
    assert begin == size
    assert np.array_equal(np.concatenate(pieces), full)


def test_part_range_rounds_halves_away_from_zero():
    # 5 elements on 2 servers: MXNet cuts at C round(2.5) == 3; Python's round gives 2.
    assert server.part_range(5, 2, 0) == (0, 3)
    assert server.row_part_range(5, 2, 0) == (0, 3)
    assert round(2.5) == 2


def test_server_side_plan_checks_the_size_and_slices_rows_sparse():
    opt = mo.Masked('sgd', masks={'w': mo.train_rows_from(4)}, param_idx2name={0: 'w', 1: 'v'})
    side = server.ServerSide({'shapes': {'w': ((5, 2), 'row_sparse'), 'v': ((3,), 'default')},
                              'bound': 6}, rank=1, num_servers=2)
    weight = mx.nd.zeros((2, 2)).tostype('row_sparse')  # rows 3..4 of 5, local ids 0..1
    plan = side.plan(opt, 0, weight)
    assert plan.row_ids.tolist() == [1]  # row 4 is local row 1
    with pytest.raises(ValueError, match='key order does not match'):
        side.plan(opt, 1, mx.nd.zeros((4,)))
    with pytest.raises(ValueError, match='has no parameter name'):
        side.plan(opt, 7, mx.nd.zeros((4,)))


def test_optimizer_pickled_for_servers_is_ascii_and_guarded(monkeypatch):
    """What set_optimizer sends: protocol 0, decodable as UTF-8, with the import guard first;
    a server process that cannot import masked_opt exits with the message."""
    net = mx.gluon.nn.Embedding(6, 2)
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'masks': {net.weight: mo.scale_rows([0, 0.5, 1, 1, 1, 1])}})
    opt = trainer._optimizer
    monkeypatch.setattr(server, 'pickling_for_servers', lambda: True)
    text = pickle.dumps(opt, 0).decode('utf-8')
    assert text.index('exec') < text.index('masked_opt.optimizer')
    back = pickle.loads(text.encode('utf-8'))
    assert back._dist['shapes'][net.weight.name] == ((6, 2), 'default')
    assert back.masks == opt.masks
    code = ('import pickle, sys; sys.modules["masked_opt"] = None; '
            'pickle.loads(sys.stdin.buffer.read())')
    proc = subprocess.run([sys.executable, '-c', code], input=text.encode('utf-8'),
                          capture_output=True, env=dict(os.environ, DMLC_ROLE='server'),
                          timeout=120)
    assert proc.returncode == server.EXIT_CODE, proc.stderr
    assert b'masked_opt cannot be imported' in proc.stderr
