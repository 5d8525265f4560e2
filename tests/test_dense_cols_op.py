"""The in-place column-block operator (masked_opt/_native/dense_cols.cc) against MXNet's kernels.

Every case runs MXNet 1.9.1's own operator (sgd_update, multi_mp_sgd_mom_update, adam_update,
...) on a contiguous copy of the block and masked_opt_dense_cols on the block inside the
table, and compares the bits of the weight (inside and outside the block) and of every state
array. Inputs are random bit patterns (NaN payloads and signs, infinities, subnormals, -0.0);
hyper-parameters are drawn as Python floats written as MXNet's Python front end writes them.
A hyper-parameter MXNet refuses must be refused too, with nothing written. Then the
operator's boundary: bad shapes, dtypes, ranges, attributes, storage and aliasing raise a
clear MXNetError and write nothing. And the load-time self-check (masked_opt.inplace_check).
"""
import logging

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits, random_bits
from hypothesis import given
from hypothesis import strategies as st

from masked_opt import inplace_check, native
from masked_opt.kernel_calls import KERNELS, run_mxnet_kernel

pytestmark = pytest.mark.usefixtures('lib')

finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def written(draw, low, high):
    """A float between 10**low and 10**high written with 1 to 17 significant digits: MXNet's
    parser (dmlc::stof) reads about one such string in eight other than strtof does."""
    digits = draw(st.integers(1, 17))
    return float('%.*g' % (digits, 10.0 ** draw(st.floats(low, high))))


@st.composite
def hyper(draw, kernel):
    """Attribute strings as SGD/Adam pass them (str of a Python float)."""
    attrs = {'lr': str(draw(st.one_of(written(-8, 4), finite))),
             'wd': str(draw(st.one_of(st.just(0.0), written(-6, 0), finite))),
             'rescale_grad': str(draw(st.one_of(written(-4, 1), finite)))}
    clip = draw(st.one_of(st.none(), st.just(0.0), written(-3, 2), finite))
    if clip is not None:
        attrs['clip_gradient'] = str(clip)
    if kernel.endswith('_mom'):
        attrs['momentum'] = str(draw(st.one_of(st.floats(0, 1), written(-3, 0))))
    if kernel.endswith('adam'):
        attrs['beta1'] = str(draw(st.one_of(st.floats(0, 1), written(-3, 0))))
        attrs['beta2'] = str(draw(st.one_of(st.floats(0, 1), written(-3, 0))))
        attrs['epsilon'] = str(draw(st.one_of(written(-12, 0), finite)))
    return attrs


@st.composite
def op_case(draw):
    kernel = draw(st.sampled_from(sorted(KERNELS)))
    mp = KERNELS[kernel][2]
    dtype = 'float16' if mp else draw(st.sampled_from(['float16', 'float32', 'float64']))
    V, D = draw(st.integers(1, 30)), draw(st.integers(1, 12))
    lo = draw(st.integers(0, V - 1))
    hi = draw(st.integers(lo + 1, V))
    c0 = draw(st.integers(0, D - 1))
    c1 = draw(st.integers(c0 + 1, D))
    full = [draw(st.booleans()) for _ in KERNELS[kernel][1]]
    return dict(kernel=kernel, dtype=dtype, V=V, D=D, lo=lo, hi=hi, c0=c0, c1=c1, full=full,
                attrs=draw(hyper(kernel)), seed=draw(st.integers(0, 2 ** 31)))


def _values(seed, shape, dtype):
    """Random bit patterns mixed with the self-check's draws (a NaN in one entry of two arrays
    in about 1 of 20 entries: the operand order of an addition shows in its payload)."""
    rng = np.random.default_rng(seed)
    a = random_bits(seed, shape, dtype)
    b = inplace_check.draw_values(rng, shape, dtype)
    return np.where(rng.random(shape) < 0.7, b, a)


def _arrays(case):
    """Weight, gradient and states (numpy) of a case; states block- or table-shaped."""
    s = case['seed']
    V, D, R, k = case['V'], case['D'], case['hi'] - case['lo'], case['c1'] - case['c0']
    state_dtype = 'float32' if KERNELS[case['kernel']][2] else case['dtype']
    w = _values(s, (V, D), case['dtype'])
    g = _values(s + 1, (V, D), case['dtype'])
    states = [_values(s + 2 + i, (V, D) if full else (R, k), state_dtype)
              for i, full in enumerate(case['full'])]
    return w, g, states


def _mxnet_result(case, w, g, states):
    """What MXNet's kernel makes of the block: (weight, states) as numpy, or the error."""
    block = (slice(case['lo'], case['hi']), slice(case['c0'], case['c1']))
    ref_w = mx.nd.array(w[block], dtype=w.dtype)
    ref_s = [mx.nd.array(s[block] if full else s, dtype=s.dtype)
             for s, full in zip(states, case['full'], strict=True)]
    try:
        run_mxnet_kernel(case['kernel'], case['attrs'], ref_w,
                         mx.nd.array(g[block], dtype=g.dtype), ref_s)
        mx.nd.waitall()
    except mx.MXNetError as e:
        return e
    want_w = w.copy()
    want_w[block] = ref_w.asnumpy()
    want_s = []
    for s, r, full in zip(states, ref_s, case['full'], strict=True):
        out = s.copy()
        if full:
            out[block] = r.asnumpy()
        else:
            out = r.asnumpy()
        want_s.append(out)
    return want_w, want_s


@given(op_case())
def test_in_place_block_gives_mxnets_bits(case):
    w, g, states = _arrays(case)
    want = _mxnet_result(case, w, g, states)
    got_w = mx.nd.array(w, dtype=w.dtype)
    got_g = mx.nd.array(g, dtype=g.dtype)
    got_s = [mx.nd.array(s, dtype=s.dtype) for s in states]
    try:
        native.dense_cols(got_w, got_g, got_s, case['kernel'], case['attrs'], case['lo'],
                          case['hi'], case['c0'], case['c1'])
        mx.nd.waitall()
    except mx.MXNetError as e:
        # Refused: only where MXNet refuses the same attributes, and nothing written.
        assert isinstance(want, Exception), 'refused what MXNet runs: %s' % e
        assert_same_bits(w, got_w, 'weight after a refused call')
        for s, out in zip(states, got_s, strict=True):
            assert_same_bits(s, out, 'state after a refused call')
        return
    assert not isinstance(want, Exception), 'ran what MXNet refuses (%s)' % want
    assert_same_bits(want[0], got_w, 'weight')
    assert_same_bits(g, got_g, 'gradient')
    for name, ref, out in zip(KERNELS[case['kernel']][1], want[1], got_s, strict=True):
        assert_same_bits(ref, out, name)


def test_every_kernel_on_a_latent_split_block():
    """Each kernel and dtype once on the benchmark's shape of block (last D/8 columns)."""
    for kernel, (_, names, mp) in KERNELS.items():
        for dtype in (['float16'] if mp else ['float16', 'float32', 'float64']):
            case = dict(kernel=kernel, dtype=dtype, V=50, D=16, lo=0, hi=50, c0=14, c1=16,
                        full=[False] * len(names), seed=3, attrs={
                            'lr': '0.01', 'wd': '0.0001', 'rescale_grad': '0.0009765625',
                            'momentum': '0.9', 'beta1': '0.9', 'beta2': '0.999',
                            'epsilon': '1e-08'})
            if not kernel.endswith('_mom'):
                del case['attrs']['momentum']
            if not kernel.endswith('adam'):
                for key in ('beta1', 'beta2', 'epsilon'):
                    del case['attrs'][key]
            test_in_place_block_gives_mxnets_bits.hypothesis.inner_test(case)


# Learning rates that MXNet's dmlc::stof reads as another float32 than strtof (and istream,
# which the multi_* ops' lrs/wds go through) does: found by running sgd_update on them.
STOF_IS_NOT_STRTOF = ['1.58', '24.724', '5.35e-07', '2.4568993e-07', '1.405271004226806e-05']


@pytest.mark.parametrize('kernel', ['sgd', 'multi_sgd', 'sgd_mom', 'multi_mp_sgd_mom', 'adam'])
def test_hyper_parameters_parsed_as_mxnet_parses_them(kernel):
    """A scalar field through dmlc::stof, a multi_* op's lr and wd through istream: one
    parser for both fails here on at least one of the strings."""
    for i, text in enumerate(STOF_IS_NOT_STRTOF):
        attrs = {'lr': text, 'wd': text, 'rescale_grad': text, 'clip_gradient': text}
        if kernel.endswith('_mom'):
            attrs['momentum'] = '0.9'
        if kernel == 'adam':
            attrs.update(beta1='0.9', beta2='0.99', epsilon=text)
        names = KERNELS[kernel][1]
        case = dict(kernel=kernel, dtype='float16' if KERNELS[kernel][2] else 'float32',
                    V=40, D=6, lo=0, hi=40, c0=1, c1=5, full=[False] * len(names), seed=i,
                    attrs=attrs)
        test_in_place_block_gives_mxnets_bits.hypothesis.inner_test(case)


# ---- the boundary: what the operator refuses, and that it writes nothing then ----
def _good():
    w = mx.nd.array(random_bits(1, (6, 5), 'float32'))
    g = mx.nd.array(random_bits(2, (6, 5), 'float32'))
    m = mx.nd.array(random_bits(3, (3, 2), 'float32'))
    v = mx.nd.array(random_bits(4, (3, 2), 'float32'))
    return w, g, [m, v]


ADAM = {'lr': '0.1', 'wd': '0.0', 'rescale_grad': '1.0', 'beta1': '0.9', 'beta2': '0.99',
        'epsilon': '1e-8'}


def _bad_calls():
    """(what, call(w, g, states)) pairs that must raise; arrays from _good()."""
    z = mx.nd.zeros

    def op(w, g, s, kernel='adam', attrs=ADAM, lo=1, hi=4, c0=2, c1=4, **kw):
        return mx.nd.masked_opt_dense_cols(w, g, *s, kernel=kernel, lo=lo, hi=hi, c0=c0,
                                           c1=c1, out=w, **dict(attrs, **kw))
    return [
        ('hi beyond V', lambda w, g, s: op(w, g, s, hi=7)),
        ('c1 beyond D', lambda w, g, s: op(w, g, s, c1=6)),
        ('lo == hi', lambda w, g, s: op(w, g, s, lo=2, hi=2)),
        ('c0 > c1', lambda w, g, s: op(w, g, s, c0=3, c1=2)),
        ('negative lo', lambda w, g, s: op(w, g, s, lo=-1)),
        ('non-integer c0', lambda w, g, s: op(w, g, s, c0='1.5')),
        ('huge hi', lambda w, g, s: op(w, g, s, hi=2 ** 70)),
        ('unknown kernel', lambda w, g, s: op(w, g, s, kernel='rmsprop')),
        ('no kernel', lambda w, g, s: mx.nd.masked_opt_dense_cols(
            w, g, *s, lo=1, hi=4, c0=2, c1=4, out=w, **ADAM)),
        ('missing lr', lambda w, g, s: op(w, g, s, attrs={'wd': '0'})),
        ('bad float', lambda w, g, s: op(w, g, s, beta1='0.9x')),
        ('too few inputs', lambda w, g, s: op(w, g, s[:1])),
        ('too many inputs', lambda w, g, s: op(w, g, s + [s[0].copy()])),
        ('1-D weight', lambda w, g, s: op(w.reshape((-1,)), g.reshape((-1,)), s)),
        ('3-D weight', lambda w, g, s: op(w.reshape((6, 5, 1)), g.reshape((6, 5, 1)), s)),
        ('grad of another shape', lambda w, g, s: op(w, z((6, 4)), s)),
        ('state of another shape', lambda w, g, s: op(w, g, [s[0], z((3, 3))])),
        ('float64 grad', lambda w, g, s: op(w, g.astype('float64'), s)),
        ('float16 state', lambda w, g, s: op(w, g, [s[0], s[1].astype('float16')])),
        ('int32 weight', lambda w, g, s: op(w.astype('int32'), g.astype('int32'),
                                            [a.astype('int32') for a in s])),
        ('mp kernel on float32', lambda w, g, s: op(w, g, s + [w.copy()], kernel='mp_adam')),
        ('row_sparse grad', lambda w, g, s: op(w, g.tostype('row_sparse'), s)),
        ('grad is the weight', lambda w, g, s: op(w, w, s)),
        ('a state is the weight', lambda w, g, s: op(w, g, [w, s[1]], lo=0, hi=6, c0=0, c1=5)),
        ('two states share memory', lambda w, g, s: op(w, g, [s[0], s[0]])),
        ('output is not the weight', lambda w, g, s: mx.nd.masked_opt_dense_cols(
            w, g, *s, kernel='adam', lo=1, hi=4, c0=2, c1=4, out=z((5, 6)), **ADAM)),
    ]


@pytest.mark.parametrize('what', [name for name, _ in _bad_calls()])
def test_bad_call_raises_and_writes_nothing(what):
    call = dict(_bad_calls())[what]
    w, g, s = _good()
    before = [a.asnumpy() for a in [w, g] + s]
    with pytest.raises(mx.MXNetError, match='masked_opt_dense_cols|dense_cols|'
                       'Check failed|shape|type|storage'):
        call(w, g, s)
        mx.nd.waitall()
    for b, a in zip(before, [w, g] + s, strict=True):
        assert_same_bits(b, a, what)


@given(st.data())
def test_fuzzed_attributes_raise_or_match(data):
    """Arbitrary attribute strings and ranges: a clear error with nothing written, or a result
    (the call's weight stays finite-shaped and the process alive)."""
    w, g, s = _good()
    before = [a.asnumpy() for a in [w, g] + s]
    text = st.one_of(st.text(max_size=12), st.integers(-3, 10).map(str), finite.map(str))
    attrs = {key: data.draw(text, label=key) for key in
             data.draw(st.sets(st.sampled_from(sorted(ADAM) + ['momentum', 'lo', 'hi', 'c0',
                                                                'c1', 'kernel'])))}
    attrs.setdefault('kernel', 'adam')
    for key, value in (('lo', '1'), ('hi', '4'), ('c0', '2'), ('c1', '4')):
        attrs.setdefault(key, value)
    try:
        mx.nd.masked_opt_dense_cols(w, g, *s, out=w, **attrs)
        mx.nd.waitall()
    except mx.MXNetError as e:
        assert 'masked_opt_dense_cols' in str(e) or 'Check failed' in str(e)
        for b, a in zip(before, [w, g] + s, strict=True):
            assert_same_bits(b, a, 'after a refused call')
        return
    assert_same_bits(before[1], g, 'gradient')


# ---- the load-time self-check ----
def test_self_check_passes_here_and_is_fast():
    st_ = inplace_check.status()
    assert st_.usable, st_.reason
    assert st_.cases >= 100


@pytest.fixture
def fresh_check(monkeypatch):
    """A self-check that has not run yet in this process (restored afterwards)."""
    monkeypatch.setattr(inplace_check, '_result', None)
    yield


def test_self_check_off_on_another_mxnet(fresh_check, monkeypatch, caplog):
    monkeypatch.setattr(mx, '__version__', '1.9.2')
    with caplog.at_level(logging.WARNING, logger='masked_opt'):
        assert not inplace_check.check()
        assert not inplace_check.check()   # once per process: no second line
    st_ = inplace_check.status()
    assert not st_.usable and '1.9.2' in st_.reason and '1.9.1' in st_.reason
    lines = [r for r in caplog.records if 'in-place' in r.getMessage()]
    assert len(lines) == 1 and '1.9.2' in lines[0].getMessage()


def test_self_check_off_on_one_differing_bit(fresh_check, monkeypatch, caplog):
    """A reference that differs in one bit of one entry of one case turns the strategy off."""
    real = run_mxnet_kernel
    calls = []

    def off_by_one_bit(kernel, attrs, weight, grad, states):
        out = real(kernel, attrs, weight, grad, states)
        calls.append(kernel)
        if len(calls) == 37:   # one case somewhere in the middle
            a = weight.asnumpy()
            a.reshape(-1).view(as_bits(a).dtype)[5] ^= 1
            weight[:] = a
        return out
    monkeypatch.setattr(inplace_check, 'run_mxnet_kernel', off_by_one_bit)
    with caplog.at_level(logging.WARNING, logger='masked_opt'):
        assert not inplace_check.check()
    st_ = inplace_check.status()
    assert not st_.usable and 'differs from MXNet' in st_.reason and '1 of' in st_.reason
    assert sum('in-place' in r.getMessage() for r in caplog.records) == 1
