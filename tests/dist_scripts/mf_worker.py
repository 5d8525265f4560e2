"""One worker of a dist kvstore test job: train a small MF model with a masked optimizer.

Usage: ``python mf_worker.py CONFIG_JSON OUT_DIR``. Writes ``OUT_DIR/worker<rank>.npz`` with
each parameter before training (``init:<name>``) and after (``final:<name>``), the latter
pulled from the servers after a barrier so that dist_async workers compare the same values.

CONFIG keys (all optional):
  api: 'module' | 'gluon'; kvstore: 'dist_sync' | 'dist_async'; base: 'sgd' | 'adam';
  by: 'name' | 'instance'; update_on_kvstore: bool; sparse: 'dense' | 'sparse_embedding' |
  'sparse_grad'; n_items, n_users, dim, n_old, steps, batch: ints;
  mask: 'rows' (item rows from n_old) | 'rows_cols' (also a column of the user table);
  extra_key: initialise another string key on the kvstore first (Module key-order trap);
  tamper_shape: record a wrong full shape for the item table (server check);
  grow: after training, grow the item table by GROW rows (Gluon: grow_embedding on the layer,
  Module: grow_params on get_params()) before anything else reads it, and write the grown
  table as ``final:grown``.
"""
import json
import os
import sys

import mxnet as mx
import numpy as np

import masked_opt as mo
from masked_opt.launch import start_trainer_kvstore

HERE = os.path.dirname(os.path.abspath(__file__))
GROW = 3


def config():
    cfg = {'api': 'module', 'kvstore': 'dist_sync', 'base': 'sgd', 'by': 'name',
           'update_on_kvstore': True, 'sparse': 'dense', 'n_items': 40, 'n_users': 12,
           'dim': 4, 'n_old': 25, 'steps': 3, 'batch': 8, 'mask': 'rows_cols',
           'extra_key': False, 'tamper_shape': False, 'grow': False}
    cfg.update(json.loads(sys.argv[1]))
    return cfg


def hyper(cfg):
    if cfg['base'] == 'sgd':
        return {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 0.01}
    return {'learning_rate': 0.01, 'wd': 0.01}


def masks_for(cfg, item_name, user_name):
    masks = {item_name: mo.train_rows_from(cfg['n_old'])}
    if cfg['mask'] == 'rows_cols':
        masks[user_name] = mo.train_cols([cfg['dim'] - 1])
    return masks


def optimizer(cfg, masks, **kwargs):
    if cfg['by'] == 'name':
        return 'masked', dict(hyper(cfg), base=cfg['base'], masks=masks, **kwargs)
    base = mx.optimizer.create(cfg['base'], **hyper(cfg), **kwargs)
    return mo.Masked(base=base, masks=masks), None


def data(cfg, rank):
    rng = np.random.RandomState(100 + rank)  # each worker its own batches
    n = cfg['steps'] * cfg['batch']
    return (rng.randint(0, cfg['n_users'], n).astype(np.float32),
            rng.randint(0, cfg['n_items'], n).astype(np.float32),
            rng.rand(n).astype(np.float32))


def init_values(cfg):
    rng = np.random.RandomState(7)  # identical on every worker
    return {'user': rng.uniform(-0.5, 0.5, (cfg['n_users'], cfg['dim'])).astype(np.float32),
            'item': rng.uniform(-0.5, 0.5, (cfg['n_items'], cfg['dim'])).astype(np.float32)}


def embedding(cfg, data, name, rows, sparse):
    if sparse == 'sparse_embedding':
        weight = mx.sym.Variable(name + '_weight', stype='row_sparse')
        return mx.sym.contrib.SparseEmbedding(data, weight=weight, input_dim=rows,
                                              output_dim=cfg['dim'], name=name)
    return mx.sym.Embedding(data, input_dim=rows, output_dim=cfg['dim'], name=name,
                            sparse_grad=sparse == 'sparse_grad')


def run_module(cfg, kv):
    user = embedding(cfg, mx.sym.Variable('member'), 'member_embedding', cfg['n_users'], 'dense')
    item = embedding(cfg, mx.sym.Variable('book'), 'book_embedding', cfg['n_items'],
                     cfg['sparse'])
    pred = mx.sym.sum_axis(user * item, axis=1)
    sym = mx.sym.LinearRegressionOutput(pred, mx.sym.Variable('label'))
    member, book, label = data(cfg, kv.rank)
    it = mx.io.NDArrayIter({'member': member, 'book': book}, {'label': label},
                           batch_size=cfg['batch'], shuffle=False)
    init = init_values(cfg)
    arg_params = {'member_embedding_weight': mx.nd.array(init['user']),
                  'book_embedding_weight': mx.nd.array(init['item'])}
    if cfg['sparse'] == 'sparse_embedding':
        arg_params['book_embedding_weight'] = arg_params['book_embedding_weight'].tostype(
            'row_sparse')
    masks = masks_for(cfg, 'book_embedding_weight', 'member_embedding_weight')
    opt, params = optimizer(cfg, masks)
    if cfg['extra_key']:
        kv.init('some_other_key', mx.nd.zeros((3,)))
    if cfg['tamper_shape']:
        tamper(cfg)
    mod = mx.mod.Module(sym, data_names=['member', 'book'], label_names=['label'])
    if cfg['sparse'] == 'sparse_embedding':
        # Module pulls the rows of a row_sparse weight a batch needs before forward.
        mod.bind(it.provide_data, it.provide_label)
        mod.init_params(arg_params=arg_params)
        mod.init_optimizer(kvstore=kv, optimizer=opt, optimizer_params=params or {})
        for batch in it:
            mod.prepare(batch, sparse_row_id_fn=lambda b: {'book_embedding_weight':
                                                            b.data[1]})
            mod.forward_backward(batch)
            mod.update()
    else:
        mod.fit(it, num_epoch=1, kvstore=kv, optimizer=opt, optimizer_params=params or (),
                arg_params=arg_params, initializer=mx.init.Zero())
    final = {}
    settle(kv)
    if cfg['grow']:
        params, _ = mo.grow_params(mod.get_params()[0], {'book_embedding_weight': GROW})
        final['grown'] = params['book_embedding_weight'].tostype('default').asnumpy()
    for name in ('member_embedding_weight', 'book_embedding_weight'):
        out = mod._exec_group.param_arrays[mod._exec_group.param_names.index(name)][0]
        if mod._update_on_kvstore:
            if out.stype == 'row_sparse':
                kv.row_sparse_pull(name, out=out, row_ids=mx.nd.arange(out.shape[0],
                                                                       dtype='int64'))
            else:
                kv.pull(name, out=out)
        final[name] = out.tostype('default').asnumpy()
    return arg_params, final, mod._update_on_kvstore


class MF(mx.gluon.Block):
    def __init__(self, cfg):
        super().__init__(prefix='mf_')
        with self.name_scope():
            self.user = mx.gluon.nn.Embedding(cfg['n_users'], cfg['dim'], prefix='user_')
            if cfg['sparse'] == 'sparse_embedding':
                self.item = mx.gluon.contrib.nn.SparseEmbedding(cfg['n_items'], cfg['dim'],
                                                                prefix='item_')
            else:
                self.item = mx.gluon.nn.Embedding(cfg['n_items'], cfg['dim'], prefix='item_',
                                                  sparse_grad=cfg['sparse'] == 'sparse_grad')

    def forward(self, u, i):
        return (self.user(u) * self.item(i)).sum(axis=1)


def run_gluon(cfg, kv):
    net = MF(cfg)
    net.initialize(mx.init.Zero())
    init = init_values(cfg)
    net.user.weight.set_data(mx.nd.array(init['user']))
    net.item.weight.set_data(mx.nd.array(init['item']))
    masks = masks_for(cfg, net.item.weight, net.user.weight)
    # With a row_sparse weight the kvstore starts before the first step, and Trainer then
    # insists that rescale_grad never changes: set 1 / batch size here and step(1) below.
    opt, params = optimizer(cfg, masks, rescale_grad=1.0 / cfg['batch'])
    if cfg['tamper_shape']:
        tamper(cfg)
    trainer = mx.gluon.Trainer(net.collect_params(), opt, params, kvstore=kv,
                               update_on_kvstore=cfg['update_on_kvstore'])
    # MXNet 1.9.1 race with update_on_kvstore=False: see start_trainer_kvstore.
    start_trainer_kvstore(trainer)
    member, book, label = data(cfg, kv.rank)
    b = cfg['batch']
    for step in range(cfg['steps']):
        u, i, y = (mx.nd.array(a[step * b:(step + 1) * b]) for a in (member, book, label))
        with mx.autograd.record():
            loss = ((net(u, i) - y) ** 2).sum()
        loss.backward()
        trainer.step(1)
    settle(kv)
    final = {}
    params = trainer._params
    n_rows = {p.name: p.shape[0] for p in params}
    if cfg['grow']:
        # Before anything reads the table: the layer holds only its last batch's rows.
        mo.grow_embedding(net.item, GROW)
        final['grown'] = net.item.weight._data[0].tostype('default').asnumpy()
    for p in (net.user.weight, net.item.weight):
        if trainer._update_on_kvstore:
            idx = params.index(p)
            if p._stype == 'row_sparse':
                # The servers' table, pulled into an array of its own.
                out = mx.nd.sparse.zeros('row_sparse', (n_rows[p.name], cfg['dim']))
                kv.row_sparse_pull(idx, out=out,
                                   row_ids=mx.nd.arange(n_rows[p.name], dtype='int64'))
                final[p.name] = out.tostype('default').asnumpy()
                continue
            kv.pull(idx, out=p.data())
        final[p.name] = p.data().asnumpy()
    arg_params = {net.user.weight.name: init['user'], net.item.weight.name: init['item']}
    return arg_params, final, trainer._update_on_kvstore


def settle(kv):
    """Wait until every worker's pushes have been applied, so that a pull sees the end state.

    A push returns before the server has answered; dist_async servers answer after updating.
    """
    mx.nd.waitall()
    kv._barrier()


def tamper(cfg):
    """Make the worker record a wrong full shape for the item table (tests the server check)."""
    from masked_opt import server
    capture = server.capture

    def wrong(opt):
        meta = capture(opt)
        for name, (shape, stype) in list(meta['shapes'].items()):
            if 'book' in name or 'item' in name:
                meta['shapes'][name] = ((shape[0] + 1,) + shape[1:], stype)
        return meta
    server.capture = wrong


def main():
    cfg = config()
    out_dir = sys.argv[2]
    kv = mx.kv.create(cfg['kvstore'])
    if cfg['api'] == 'module':
        os.environ['MXNET_UPDATE_ON_KVSTORE'] = '1' if cfg['update_on_kvstore'] else '0'
        init, final, on_kv = run_module(cfg, kv)
    else:
        init, final, on_kv = run_gluon(cfg, kv)
    arrays = {'init:' + k: (v.tostype('default').asnumpy() if hasattr(v, 'asnumpy') else v)
              for k, v in init.items()}
    arrays.update({'final:' + k: v for k, v in final.items()})
    arrays['update_on_kvstore'] = np.array(bool(on_kv))
    np.savez(os.path.join(out_dir, 'worker%d.npz' % kv.rank), **arrays)
    print('worker %d done' % kv.rank)


if __name__ == '__main__':
    main()
