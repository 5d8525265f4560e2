"""The dense update path makes no host sync and uses only the operators docs/gpu.md lists.

After the first step (which builds the per-context plan and uploads its index arrays once),
every step of the masked optimizer runs under :func:`sync_guard.guard`: a device-to-host sync
anywhere in it fails the test, and every operator it runs is recorded. The operators the
wrapper adds to those of the wrapped optimizer must be the ones docs/gpu.md lists, each with a
GPU kernel in MXNet 1.9.1.

The Python update path is the same code on every device, so the dry run on CPU
(``MASKED_OPT_GPU_SUITE_ON_CPU=1``) checks the same calls; on a GPU it also runs the kernels.
"""
import pathlib

import mxnet as mx
import numpy as np
import pytest
from gpu_env import RUN, SKIP_REASON, device
from sync_guard import HostSync, guard

import masked_opt as mo

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not RUN, reason=SKIP_REASON)]

# The operators the wrapper itself runs on the dense path, by role. A change to the update
# path that adds one must add it here *and* to the table in docs/gpu.md, with its GPU kernel
# facts (kernel, host sync, 1.9.1 source line): test_gpu_page_lists_every_wrapper_operator
# checks the page.
GATHER = {'take', 'slice'}
SCATTER = {'_scatter_set_nd', '_slice_assign', '_copyto'}
BLEND = {'broadcast_sub', 'broadcast_mul', '_copyto'}
WRAPPER_OPS = GATHER | SCATTER | BLEND
GPU_PAGE = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'gpu.md'

OPTIMIZERS = [
    ('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-4}),
    ('adam', {'learning_rate': 0.01, 'wd': 1e-4}),
    ('nag', {'learning_rate': 0.1, 'momentum': 0.9}),
    ('rmsprop', {'learning_rate': 0.01, 'centered': True}),
    ('adagrad', {'learning_rate': 0.1}),
]
MASKS = {
    'rows': mo.train_rows_from(5),
    'cols': mo.train_cols([1, 3]),
    'rows_and_cols': mo.train_rows([0, 6]) & mo.freeze_cols([2]),
    'fraction': mo.scale_rows([0, 0, 0.5, 1, 1, 0.25, 1, 0]),
}


def _canonical(names):
    """One name per operator: not a numpy/sparse alias, the listed one if any."""
    plain = sorted(n for n in names if not n.startswith(('_npi_', '_np_', '_sparse_')))
    plain = plain or sorted(names)
    listed = [n for n in plain if n in WRAPPER_OPS]
    return listed[0] if listed else plain[0]


def _ops(calls):
    """Recorded calls -> set of operator names."""
    return {_canonical(names) for names in calls}


def _run(opt, weight, grads, monkeypatch):
    """Step 1 unguarded (plan built, state made), steps 2.. guarded; returns recorded ops."""
    state = opt.create_state(0, weight)
    opt.update(0, weight, grads[0], state)
    with guard(monkeypatch) as calls:
        for g in grads[1:]:
            opt.update(0, weight, g, state)
    return _ops(calls)


@pytest.mark.parametrize('mask', list(MASKS), ids=list(MASKS))
@pytest.mark.parametrize('base,settings', OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_masked_update_never_syncs(base, settings, mask, monkeypatch):
    ctx = device()
    rng = np.random.RandomState(0)
    grads = [mx.nd.array(rng.normal(size=(8, 4)), ctx=ctx) for _ in range(4)]
    names = {'param_idx2name': {0: 'emb_weight'}}

    masked = mo.Masked(base=base, masks={'emb_weight': MASKS[mask]}, **settings, **names)
    # The strategies a GPU context gets: the native ones (the in-place dense update among
    # them) are CPU only, so a dry run on CPU would otherwise check another path.
    masked.step_path = 'pure'
    used = _run(masked, mx.nd.array(rng.normal(size=(8, 4)), ctx=ctx), grads, monkeypatch)

    alone = mx.optimizer.create(base, **settings, **names)
    own = _run(alone, mx.nd.array(rng.normal(size=(8, 4)), ctx=ctx), grads, monkeypatch)

    added = used - own
    assert added <= WRAPPER_OPS, (
        'the update path runs operators that docs/gpu.md does not list: %s. Check each has a '
        'GPU kernel and no host sync, then add it to WRAPPER_OPS and to the page'
        % sorted(added - WRAPPER_OPS))
    assert added & GATHER and added & SCATTER   # the guard did see the gather and the scatter


def test_trainer_step_never_syncs(monkeypatch):
    ctx = device()
    net = mx.gluon.nn.Embedding(20, 4)
    net.initialize(ctx=ctx)
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked', {
        'base': 'adam', 'learning_rate': 0.01, 'wd': 1e-4,
        'masks': {net.weight: mo.train_rows_from(15) & mo.train_cols([0, 3])}})
    batch = mx.nd.array([1, 2, 16, 19], ctx=ctx)
    for step in range(3):
        with mx.autograd.record():
            loss = net(batch).sum()
        loss.backward()
        if step == 0:
            trainer.step(4)
            continue
        with guard(monkeypatch) as calls:
            trainer.step(4)
        ops = _ops(calls)
        assert 'adam_update' in ops and ops & GATHER and ops & SCATTER


def test_guard_catches_a_sync(monkeypatch):
    """The guard is not vacuous: asnumpy, wait_to_read and nd.array(numpy) are refused."""
    x = mx.nd.ones((2, 2), ctx=device())
    for sync in (x.asnumpy, x.wait_to_read, lambda: mx.nd.array(np.ones(2), ctx=device())):
        with pytest.raises(HostSync):
            with guard(monkeypatch):
                sync()


def test_gpu_page_lists_every_wrapper_operator():
    text = GPU_PAGE.read_text(encoding='utf-8')
    missing = sorted(op for op in WRAPPER_OPS if '`%s`' % op not in text)
    assert not missing, 'docs/gpu.md does not list %s' % missing
