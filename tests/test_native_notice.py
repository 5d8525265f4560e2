"""A missing native library is said where the user looks: ``masked-opt info``, the demo's
header (text and JSON), and the first step that would have used it (tests/test_native_ops.py
covers that one: ``notify_fallback``)."""
import json
import os
import subprocess
import sys

from masked_opt import native
from masked_opt.cli import main

TINY = ['demo', '--users', '30', '--items', '20', '--new-users', '5', '--new-items', '4',
        '--per-user', '6', '--epochs', '1', '--new-epochs', '1', '--seeds', '1',
        '--no-progress']
MISSING = native.Status(True, False, '/nowhere/libmasked_opt_ops.so',
                        'no file /nowhere/libmasked_opt_ops.so. For the fast path: rebuild')


def test_info_says_the_library_is_missing_and_how_to_get_it(tmp_path):
    env = dict(os.environ, MASKED_OPT_NATIVE='1',
               MASKED_OPT_NATIVE_LIB=str(tmp_path / 'libmasked_opt_ops.so'))
    out = subprocess.run([sys.executable, '-m', 'masked_opt', 'info'], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [x for x in out.stdout.splitlines() if x.startswith('native sparse operators:')][0]
    assert 'not used, the pure MXNet path runs' in line
    assert 'no file %s' % (tmp_path / 'libmasked_opt_ops.so') in line
    assert 'MASKED_OPT_NATIVE_LIB' in line


def test_the_demo_header_says_the_library_is_missing(capsys, monkeypatch):
    monkeypatch.setattr(native, 'status', lambda: MISSING)
    assert main(TINY) == 0
    header = capsys.readouterr().out.splitlines()[:6]
    line = [x for x in header if x.startswith('  update path: ')]
    assert line == ["  update path: the pure MXNet path (same bits, slower): masked_opt's native "
                    'operators are not loaded: ' + MISSING.reason], header


def test_the_demo_header_and_json_say_which_path_ran(capsys):
    st = native.status()
    assert main(TINY) == 0
    header = capsys.readouterr().out.splitlines()[:6]
    expect = "masked_opt's native operators" if st.loaded else 'the pure MXNet path'
    assert any(x.startswith('  update path: ' + expect) for x in header), header
    assert main(TINY + ['--json']) == 0
    assert json.loads(capsys.readouterr().out)['native'] == {'loaded': st.loaded,
                                                             'reason': st.reason}
