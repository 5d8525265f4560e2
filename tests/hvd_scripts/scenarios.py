"""Horovod scenarios for ``tests/test_horovod.py``; each rank of a ``horovodrun -np 2`` job runs
this script.

    python scenarios.py OUTDIR SCENARIO [SCENARIO ...]

For each scenario every rank writes ``OUTDIR/<scenario>.rank<r>.npz`` holding, per parameter,
``pre:`` (the rank's own initial weights), ``init:`` (after Horovod's broadcast from rank 0),
``final:`` (after training) and ``ref:`` -- a one-process reference computed here without
Horovod: the same initial weights, the same optimizer settings, and each step the gradients of
every rank's batch computed one after the other at the same weights and summed in rank order,
which is what the allreduce hands each rank (a sum of two float32 numbers does not depend on
their order). Controls (``ctl_*``) run the same with a plain MXNet optimizer instead of the
masked one, to show that a Horovod limit is Horovod's. The test compares the bits.

Every rank's data differ (``batch(rank, step)``), so the allreduce matters; the initial weights
differ too before the broadcast.
"""
import os
import sys

import horovod.mxnet as hvd
import mxnet as mx
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from models import GluonMF, forum_mf  # noqa: E402  (tests/models.py)

import masked_opt as mo  # noqa: E402

N_USERS, N_ITEMS, N_OLD, DIM, BATCH, STEPS = 12, 10, 6, 4, 8, 3
G_USER, G_BOOK = 'mf_user_weight', 'mf_book_weight'           # Gluon (GluonMF)
M_USER, M_BOOK = 'member_embedding_weight', 'book_embedding_weight'   # Module (forum_mf)

ADAM = {'base': 'adam', 'learning_rate': 0.05, 'wd': 1e-3}
SGD_MOM = {'base': 'sgd', 'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}


def batch(rank, step):
    rng = np.random.RandomState(1000 + 10 * step + rank)
    return (rng.randint(0, N_USERS, BATCH).astype(np.float32),
            rng.randint(0, N_ITEMS, BATCH).astype(np.float32),
            rng.rand(BATCH).astype(np.float32))


def plain(settings):
    """The wrapped optimizer alone (the controls)."""
    settings = dict(settings)
    return mx.optimizer.create(settings.pop('base'), **settings)


# ---- Gluon ----

def gluon_net(seed):
    mx.random.seed(seed)
    net = GluonMF(N_USERS, N_ITEMS, DIM)
    net.initialize(mx.init.Uniform(0.5))
    net(mx.nd.array([0]), mx.nd.array([0]))
    return net


def gluon_masks(net, by):
    if by == 'param':
        return {net.book.weight: mo.train_rows_from(N_OLD), net.user.weight: mo.train_cols([3])}
    return {G_BOOK: mo.train_rows_from(N_OLD), '*_user_weight': mo.train_cols([3])}


def weights(net):
    return {p.name: p.data().asnumpy() for p in net.collect_params().values()}


def gluon_loss(net, rank, step):
    u, i, y = (mx.nd.array(a) for a in batch(rank, step))
    with mx.autograd.record():
        loss = ((net(u, i) - y) ** 2).sum()
    loss.backward()


def gluon_run(make_trainer, masks_by=None):
    """Train on this rank; return pre, init (after the broadcast), final."""
    net = gluon_net(seed=1 + hvd.rank())
    pre = weights(net)
    hvd.broadcast_parameters(net.collect_params(), root_rank=0)
    init = weights(net)
    masks = gluon_masks(net, masks_by) if masks_by else None
    trainer = make_trainer(net, masks)
    for step in range(STEPS):
        gluon_loss(net, hvd.rank(), step)
        trainer.step(BATCH)
    return pre, init, weights(net), trainer


def gluon_reference(init, make_optimizer, masks_by, scale):
    """One process, no Horovod: summed gradients of every rank's batch; ``_scale`` as given."""
    net = gluon_net(seed=99)
    for p in net.collect_params().values():
        p.set_data(mx.nd.array(init[p.name]))
    masks = gluon_masks(net, masks_by) if masks_by else None
    trainer = mx.gluon.Trainer(net.collect_params(), make_optimizer(masks), kvstore=None)
    trainer._scale = scale
    params = list(net.collect_params().values())
    for step in range(STEPS):
        total = None
        for rank in range(hvd.size()):
            gluon_loss(net, rank, step)
            grads = [p.grad().copy() for p in params]
            total = grads if total is None else [t + g for t, g in zip(total, grads, strict=True)]
        for p, g in zip(params, total, strict=True):
            p.grad()[:] = g
        trainer.step(BATCH)
    return weights(net)


def scenario_gluon(settings, masks_by):
    """hvd.DistributedTrainer(params, 'masked', {...}): Horovod's Gluon recipe."""
    def make(net, masks):
        return hvd.DistributedTrainer(net.collect_params(), 'masked',
                                      dict(settings, masks=masks), prefix='%s_' % masks_by)
    pre, init, final, trainer = gluon_run(make, masks_by)
    assert trainer._scale == 1.0 / hvd.size()
    ref = gluon_reference(init, lambda m: mo.Masked(**dict(settings, masks=m)), masks_by,
                          scale=trainer._scale)
    return {'pre': pre, 'init': init, 'final': final, 'ref': ref}


def scenario_gluon_trainer_distopt(settings):
    """Limit: gluon.Trainer(params, hvd.DistributedOptimizer(opt)). The Trainer writes
    rescale_grad = 1/batch on the wrapper, which keeps it: the update uses the optimizer's own
    rescale_grad, 1/size after Horovod's normalisation -- gradients BATCH times too large.
    The masked optimizer does the same as the plain one (the control)."""
    out = {}
    for tag, make_opt in (('', lambda m: mo.Masked(**dict(settings, masks=m))),
                          ('ctl_', lambda m: plain(settings))):
        def make(net, masks, make_opt=make_opt):
            return mx.gluon.Trainer(net.collect_params(), hvd.DistributedOptimizer(
                make_opt(masks)), kvstore=None)
        pre, init, final, trainer = gluon_run(make, 'param')
        inner = trainer._optimizer._optimizer
        assert vars(trainer._optimizer)['rescale_grad'] == 1.0 / (BATCH * hvd.size())
        assert inner.rescale_grad == 1.0 / hvd.size()
        # reference: Trainer.step(BATCH) with _scale = BATCH / size gives rescale_grad 1/size
        ref = gluon_reference(init, make_opt, 'param', scale=float(BATCH) / hvd.size())
        out.update({tag + 'pre': pre, tag + 'init': init, tag + 'final': final,
                    tag + 'ref': ref})
    return out


def scenario_gluon_dt_distopt(settings):
    """Limit: hvd.DistributedTrainer(params, hvd.DistributedOptimizer(opt)). Horovod unwraps
    the optimizer but its rescale_grad was already divided by size, and the Trainer divides
    again: gradients scaled by 1/size**2. Masked and plain alike."""
    out = {}
    for tag, make_opt in (('', lambda m: mo.Masked(**dict(settings, masks=m))),
                          ('ctl_', lambda m: plain(settings))):
        def make(net, masks, make_opt=make_opt, prefix='dt_' + tag):
            return hvd.DistributedTrainer(net.collect_params(), hvd.DistributedOptimizer(
                make_opt(masks)), prefix=prefix)
        pre, init, final, trainer = gluon_run(make, 'param')
        assert trainer._scale == 1.0 / hvd.size() ** 2
        ref = gluon_reference(init, make_opt, 'param', scale=trainer._scale)
        out.update({tag + 'pre': pre, tag + 'init': init, tag + 'final': final,
                    tag + 'ref': ref})
    return out


# ---- Module ----

def module_iter(rank):
    parts = [batch(rank, step) for step in range(STEPS)]
    member, book, label = (np.concatenate([p[k] for p in parts]) for k in range(3))
    return mx.io.NDArrayIter({'member': member, 'book': book}, {'label': label},
                             batch_size=BATCH, shuffle=False)


def module_masks():
    return {M_BOOK: mo.train_rows_from(N_OLD), M_USER: mo.train_cols([3])}


def new_module(it):
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=('member', 'book'),
                        label_names=('label',))
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    return mod


def module_weights(mod):
    return {k: v.asnumpy() for k, v in mod.get_params()[0].items()}


def scenario_module(settings):
    """Module.fit(optimizer=hvd.DistributedOptimizer(mo.Masked(...))): Horovod's Module recipe,
    no names handed over (Module writes idx2name on Horovod's wrapper)."""
    it = module_iter(hvd.rank())
    mod = new_module(it)
    mx.random.seed(1 + hvd.rank())
    mod.init_params(mx.init.Uniform(0.5))
    pre = module_weights(mod)
    arg, aux = mod.get_params()
    hvd.broadcast_parameters(arg, root_rank=0)
    mod.set_params(arg, aux)
    init = module_weights(mod)
    opt = hvd.DistributedOptimizer(mo.Masked(**dict(settings, masks=module_masks(),
                                                    rescale_grad=1.0 / BATCH)))
    mod.fit(it, kvstore=None, optimizer=opt, num_epoch=1, eval_metric='mse')
    assert 'idx2name' in vars(opt) and not opt._optimizer.base.idx2name
    final = module_weights(mod)

    # The reference: one Module, the summed gradients of every rank's batch.
    ref_mod = new_module(it)
    ref_mod.init_params(arg_params={k: mx.nd.array(v) for k, v in init.items()})
    ref_mod.init_optimizer(kvstore=None, optimizer=mo.Masked(**dict(
        settings, masks=module_masks(), rescale_grad=opt.rescale_grad)))
    iters = [module_iter(r) for r in range(hvd.size())]
    for batches in zip(*iters, strict=True):
        total = None
        for b in batches:
            ref_mod.forward_backward(b)
            grads = [g[0].copy() for g in ref_mod._exec_group.grad_arrays]
            total = grads if total is None else [t + g for t, g in zip(total, grads, strict=True)]
        for g, t in zip(ref_mod._exec_group.grad_arrays, total, strict=True):
            t.copyto(g[0])
        ref_mod.update()
    return {'pre': pre, 'init': init, 'final': final, 'ref': module_weights(ref_mod)}


SCENARIOS = {
    'gluon_adam_param': lambda: scenario_gluon(ADAM, 'param'),
    'gluon_sgd_name': lambda: scenario_gluon(SGD_MOM, 'name'),
    'gluon_adam_name': lambda: scenario_gluon(ADAM, 'name'),
    'module_sgd': lambda: scenario_module(SGD_MOM),
    'module_adam': lambda: scenario_module(ADAM),
    'limit_trainer_distopt': lambda: scenario_gluon_trainer_distopt(SGD_MOM),
    'limit_dt_distopt': lambda: scenario_gluon_dt_distopt(SGD_MOM),
}


def main(outdir, names):
    hvd.init()
    for name in names:
        result = SCENARIOS[name]()
        flat = {'%s:%s' % (kind, p): a for kind, arrays in result.items()
                for p, a in arrays.items()}
        np.savez(os.path.join(outdir, '%s.rank%d.npz' % (name, hvd.rank())), **flat)
        print('rank %d: %s done' % (hvd.rank(), name), flush=True)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2:])
