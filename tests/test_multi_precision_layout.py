"""Fractional masks under multi_precision need the float32 master copy's place in the state.

masked_opt knows it for MXNet's optimizers (first for most, last for SGD/LARS/NAG). An
optimizer that builds its own multi_precision state (a subclass overriding
``create_state_multi_precision``) has a layout masked_opt cannot know: a fraction there cannot
scale the master copy, so the wrapper refuses it with a TypeError when it is created -- before
any weight or state exists. 0/1 masks need no master scaling and stay allowed.
"""
import mxnet as mx
import numpy as np
import pytest

import masked_opt as mo


class _OwnLayout(mx.optimizer.Adam):
    """Adam whose multi_precision state puts the float32 master copy somewhere of its own."""

    def create_state_multi_precision(self, index, weight):
        if self.multi_precision and weight.dtype == np.float16:
            master = weight.astype(np.float32)
            return (self.create_state(index, master), master)   # master last, unlike Adam
        return self.create_state(index, weight)


class _KnownLayout(mx.optimizer.Adam):
    """A subclass that keeps MXNet's own create_state_multi_precision: a known layout."""


FRACTIONAL = {
    'scale_rows': mo.scale_rows([0, 0.5, 1, 1]),
    'scale_cols': mo.scale_cols([1, 0.25, 0]),
    'combined': mo.train_rows_from(1) & mo.scale_cols([0.5, 1, 1]),
    'plain data': {'rows': [0, 0.5, 1, 1]},
}


@pytest.mark.parametrize('mask', list(FRACTIONAL.values()), ids=list(FRACTIONAL))
def test_fraction_with_unknown_multi_precision_layout_is_refused(mask):
    with pytest.raises(TypeError, match=r"mask 'emb_weight' has fractional scales and "
                                        r"_OwnLayout uses multi_precision"):
        mo.Masked(_OwnLayout(multi_precision=True), masks={'emb_weight': mask})


def test_refused_through_gluon_trainer_before_any_update():
    net = mx.gluon.nn.Embedding(4, 3, dtype='float16', prefix='emb_')
    net.initialize()
    before = net.weight.data().asnumpy().copy()
    with pytest.raises(TypeError, match='multi_precision=False'):
        mx.gluon.Trainer(net.collect_params(), 'masked', {
            'base': _OwnLayout(multi_precision=True, learning_rate=0.1),
            'masks': {net.weight: mo.scale_rows([0, 0.5, 1, 1])}})
    np.testing.assert_array_equal(net.weight.data().asnumpy(), before)


@pytest.mark.parametrize('base, mask', [
    (_OwnLayout(multi_precision=True), mo.train_rows_from(1) & mo.freeze_cols([0])),  # 0/1
    (_OwnLayout(multi_precision=False), mo.scale_rows([0, 0.5, 1, 1])),  # no master copy
    (_KnownLayout(multi_precision=True), mo.scale_rows([0, 0.5, 1, 1])),  # MXNet's layout
    (mx.optimizer.SGD(multi_precision=True, momentum=0.9), mo.scale_rows([0, 0.5, 1, 1])),
], ids=['zero-one', 'no-multi-precision', 'known-subclass', 'sgd'])
def test_what_stays_allowed(base, mask):
    opt = mo.Masked(base, masks={'emb_weight': mask})
    assert opt.base is base
