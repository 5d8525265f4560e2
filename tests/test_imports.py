"""masked_opt's modules import each other without a circle, and the update path patches nothing.

The graph is read from the source (every ``import`` / ``from ... import`` statement, at module
level or inside a function, since a deferred import is still a dependency), so a circle that
only a late import keeps from failing at import time is found too.
"""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / 'masked_opt'


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _graph():
    """``{module: {modules of masked_opt it imports}}``."""
    modules = {_module_name(p): p for p in ROOT.rglob('*.py')}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    anchor = package.split('.')
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = '.'.join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the submodule when there is one.
                targets = [base + '.' + a.name if base + '.' + a.name in modules else base
                           for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def _cycles(graph):
    """Every elementary circle, each as a list of modules (found by depth-first search)."""
    found, seen = [], set()

    def visit(node, stack):
        for dep in sorted(graph[node]):
            if dep in stack:
                cycle = stack[stack.index(dep):]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle + [dep])
            elif len(stack) < 12:
                visit(dep, stack + [dep])
    for start in sorted(graph):
        visit(start, [start])
    return found


def test_the_graph_reader_sees_a_circle():
    """Control: a circle through a deferred import is found."""
    assert _cycles({'a': {'b'}, 'b': {'a'}, 'c': set()}) == [['a', 'b', 'a']]
    graph = _graph()
    assert 'masked_opt.steps' in graph['masked_opt.optimizer']
    assert 'masked_opt.optimizer' in graph['masked_opt.validate']


def test_no_import_circle():
    assert _cycles(_graph()) == []


_UPDATE_PATH = '''
import sys, types, pathlib
import mxnet as mx
from mxnet.kvstore.kvstore import KVStore
before = (mx.optimizer.get_updater, KVStore.set_optimizer, mx.mod.Module.bind)
# The package without its __init__ (which installs the patches on purpose): only the modules
# the update path imports run.
package = types.ModuleType('masked_opt')
package.__path__ = [str(pathlib.Path(sys.argv[1]))]
sys.modules['masked_opt'] = package
import masked_opt.optimizer, masked_opt.steps
assert 'masked_opt.states' not in sys.modules and 'masked_opt.validate' not in sys.modules
assert (mx.optimizer.get_updater, KVStore.set_optimizer, mx.mod.Module.bind) == before, 'patched'
print('untouched')
'''


def test_the_update_path_patches_nothing():
    """Importing the optimizer and the step strategies changes no function of MXNet; only
    ``import masked_opt`` does (masked_opt/_mxnet_workarounds.py, install)."""
    out = subprocess.run([sys.executable, '-c', _UPDATE_PATH, str(ROOT)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == 'untouched', out.stderr


def test_import_masked_opt_patches_mxnet_once():
    import mxnet as mx
    from mxnet.kvstore.kvstore import KVStore

    import masked_opt  # noqa: F401
    original = KVStore.set_optimizer._masked_opt_original
    assert not hasattr(original, '_masked_opt_original')
    assert mx.optimizer.get_updater.__module__ == 'masked_opt._mxnet_workarounds'
    assert mx.mod.Module.bind._masked_opt_lookup
