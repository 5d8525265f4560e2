"""Horovod with a row_sparse gradient (``Embedding(sparse_grad=True)``), for
``tests/test_horovod.py``: expected to crash Horovod's allreduce, with the masked optimizer
(``masked``) and with plain SGD (``plain``) alike.

    python sparse_grad.py masked|plain
"""
import sys

import horovod.mxnet as hvd
import mxnet as mx

import masked_opt as mo


def main(kind):
    hvd.init()
    net = mx.gluon.nn.Embedding(10, 4, sparse_grad=True)
    net.initialize(mx.init.Uniform(0.5))
    hvd.broadcast_parameters(net.collect_params(), root_rank=0)
    if kind == 'masked':
        trainer = hvd.DistributedTrainer(net.collect_params(), 'masked',
                                         {'base': 'sgd', 'learning_rate': 0.1,
                                          'masks': {net.weight: mo.train_rows_from(6)}})
    else:
        trainer = hvd.DistributedTrainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    with mx.autograd.record():
        loss = net(mx.nd.array([hvd.rank(), 6 + hvd.rank()])).sum()
    loss.backward()
    trainer.step(2)
    mx.nd.waitall()
    print('rank %d: step done' % hvd.rank(), flush=True)


if __name__ == '__main__':
    main(sys.argv[1])
