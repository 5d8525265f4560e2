"""CI check of an install made without a C++ compiler (``CXX=false pip install .``).

The install succeeded (this script runs in it); masked_opt must report that the native
operators are missing and why, train on the pure path with frozen rows bit-identical, and say
so once on the ``masked_opt`` logger. Exit code 0 when all holds.
"""
import logging
import sys

import mxnet as mx
import numpy as np

import masked_opt as mo
from masked_opt import native

records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger('masked_opt').addHandler(handler)

status = native.status()
print(status)
assert not status.loaded and status.enabled, status
assert native.REBUILD in status.reason, status.reason   # says how to get the fast path

net = mx.gluon.nn.Embedding(100, 8, sparse_grad=True)
net.initialize()
trainer = mx.gluon.Trainer(net.collect_params(), 'masked', {
    'base': 'adam', 'learning_rate': 0.1, 'masks': {net.weight: mo.train_rows_from(90)}})
before = net.weight.data().asnumpy()
for _ in range(3):
    with mx.autograd.record():
        loss = net(mx.nd.array([1, 50, 91, 95])).sum()
    loss.backward()
    trainer.step(4)
after = net.weight.data().asnumpy()
assert (before[:90].view(np.uint32) == after[:90].view(np.uint32)).all(), 'frozen rows moved'
assert (after[91] != before[91]).all(), 'trainable row did not train'
notices = [r.getMessage() for r in records]
print('\n'.join(notices))
assert len(notices) == 1 and 'pure' in notices[0], notices
# convert_embeddings: the model comes back unconverted, with one warning saying why.
records.clear()
sym = mx.sym.Embedding(mx.sym.Variable('ids'), input_dim=9, output_dim=2, sparse_grad=True)
assert mo.convert_embeddings(sym) is sym
assert type(mo.convert_embeddings(net)) is mx.gluon.nn.Embedding
notices = [r.getMessage() for r in records]
assert len(notices) == 2 and all('native library not available' in n for n in notices), notices
print('pure-path install OK')
sys.exit(0)
