"""A training process that checkpoints every epoch and resumes from the newest complete one.

Usage: ``python ckpt_train.py API DIR EPOCHS [--crash-after K | --crash-in-save K]``

- ``API`` is ``module`` (Module + Adam, ``Module.load(..., load_optimizer_states=True)``) or
  ``gluon`` (Trainer + SGD with momentum and wd, ``save_parameters``/``save_states``).
- Resumes from ``masked_opt.io.latest_checkpoint(DIR/ckpt)`` if there is one.
- ``--crash-after K``: after checkpoint K, print ``waiting`` and sleep (the test SIGKILLs it).
- ``--crash-in-save K``: SIGKILL itself while checkpoint K's parameters are half-written.
- At the end, writes the parameters to ``DIR/final.npz`` and prints ``finished``.
"""
import os
import signal
import sys
import time

import mxnet as mx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models import ForumBlock, forum_mf, mf_iter, ratings  # noqa: E402

import masked_opt as mo  # noqa: E402
from masked_opt import io  # noqa: E402

N_USERS, N_ITEMS, N_OLD, DIM, BATCH, N = 10, 12, 8, 4, 8, 32
STEPS_PER_EPOCH = N // BATCH
MASKS = {'book_embedding_weight': mo.train_rows_from(N_OLD),
         'member_embedding_weight': mo.train_cols([DIM - 1])}


def init_params():
    rng = np.random.RandomState(0)
    return {'member_embedding_weight': rng.uniform(-.5, .5, (N_USERS, DIM)).astype('f4'),
            'book_embedding_weight': rng.uniform(-.5, .5, (N_ITEMS, DIM)).astype('f4')}


def crash_inside_next_save():
    """Make the next atomic write die after writing its temporary file, before the rename."""
    # Patch the name where the checkpoint writers look it up (their globals): masked_opt.io
    # re-exports them from the module that defines them, so patching io.atomic_write alone
    # would change nothing.
    writers = io.save_module_checkpoint.__globals__
    real = writers['atomic_write']

    def dying(path):
        manager = real(path)
        tmp = manager.__enter__()

        class Dies:
            def __enter__(self):
                return tmp

            def __exit__(self, *exc):
                if path.endswith('.params'):
                    os.kill(os.getpid(), signal.SIGKILL)
                return manager.__exit__(*exc)
        return Dies()
    writers['atomic_write'] = dying


def run_module(folder, epochs, start, crash_after, crash_in_save):
    prefix = os.path.join(folder, 'ckpt')
    it = mf_iter(*ratings(N_USERS, N_ITEMS, N, seed=3), batch_size=BATCH)
    params = {'base': 'adam', 'learning_rate': 0.05, 'wd': 0.01, 'masks': MASKS,
              # Module's state file has no update counts: Adam's bias correction resumes
              # from the number of updates already done.
              'begin_num_update': start * STEPS_PER_EPOCH}
    if start:
        mod = mx.mod.Module.load(prefix, start, load_optimizer_states=True,
                                 data_names=['member', 'book'], label_names=['label'])
        mod.bind(it.provide_data, it.provide_label)
    else:
        mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                            label_names=['label'])
        mod.bind(it.provide_data, it.provide_label)
        mod.init_params(arg_params={k: mx.nd.array(v) for k, v in init_params().items()})
    mod.init_optimizer(optimizer='masked', optimizer_params=params)
    for epoch in range(start, epochs):
        it.reset()
        for batch in it:
            mod.forward_backward(batch)
            mod.update()
        if crash_in_save == epoch + 1:
            crash_inside_next_save()
        io.save_module_checkpoint(mod, prefix, epoch + 1)
        checkpointed(epoch + 1, crash_after)
    return {k: v.asnumpy() for k, v in mod.get_params()[0].items()}


def run_gluon(folder, epochs, start, crash_after, crash_in_save):
    prefix = os.path.join(folder, 'ckpt')
    net = ForumBlock(N_USERS, N_ITEMS, DIM)
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'sgd', 'learning_rate': 0.1, 'momentum': 0.9,
                                'wd': 0.01, 'masks': MASKS})
    if start:
        net.load_parameters('%s-%04d.params' % (prefix, start))
        trainer.load_states('%s-%04d.states' % (prefix, start))
    else:
        for name, value in init_params().items():
            net.collect_params()[name].set_data(mx.nd.array(value))
    member, book, label = (mx.nd.array(a) for a in ratings(N_USERS, N_ITEMS, N, seed=3))
    for epoch in range(start, epochs):
        for s in range(STEPS_PER_EPOCH):
            sl = slice(s * BATCH, (s + 1) * BATCH)
            with mx.autograd.record():
                loss = ((net(member[sl], book[sl]) - label[sl]) ** 2).sum()
            loss.backward()
            trainer.step(BATCH)
        if crash_in_save == epoch + 1:
            crash_inside_next_save()
        io.save_gluon_checkpoint(net, trainer, prefix, epoch + 1)
        checkpointed(epoch + 1, crash_after)
    return {p.name: p.data().asnumpy() for p in net.collect_params().values()}


def checkpointed(epoch, crash_after):
    print('checkpoint %d' % epoch, flush=True)
    if crash_after == epoch:
        print('waiting', flush=True)
        time.sleep(600)  # the test kills this process here


def main():
    api, folder, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    flags = dict(zip(sys.argv[4::2], map(int, sys.argv[5::2]), strict=True))
    start = io.latest_checkpoint(os.path.join(folder, 'ckpt')) or 0
    print('starting at epoch %d' % start, flush=True)
    run = run_module if api == 'module' else run_gluon
    final = run(folder, epochs, start, flags.get('--crash-after'), flags.get('--crash-in-save'))
    with io.atomic_write(os.path.join(folder, 'final.npz')) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, **final)
    print('finished', flush=True)


if __name__ == '__main__':
    main()
