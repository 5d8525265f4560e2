"""Build step only: compile the optional native MXNet operators (masked_opt/_native/*.cc).

All metadata lives in pyproject.toml. This file adds one extension, built by running the C++
compiler directly (``$CXX``, default ``g++``) against the headers of the mxnet wheel in the
build environment (``[build-system] requires`` has ``mxnet==1.9.1``):

    $CXX -std=c++11 -shared -fPIC -O2 -ffp-contract=off -Wl,-Bsymbolic -I <mxnet>/include
         -I <mxnet>/src ops.cc dense_cols.cc lookup.cc error_messages.cc mxnet_lib_api.cc
         -o masked_opt/_native/libmasked_opt_ops.so

(``mxnet_lib_api.cc`` compiles the wheel's ``src/lib_api.cc`` with its error-message store
replaced by ``error_messages.cc``'s; see there why.)

If there is no compiler, no mxnet headers, or the compilation fails, the install still
succeeds without the library (one warning line; masked_opt then uses its pure-Python path,
see masked_opt.native.status()). A wheel that carries the library is platform-specific; one
built without it is pure.
"""
import importlib.util
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:  # setuptools >= 70.1 ships bdist_wheel; older ones take it from the wheel package
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover - depends on the build environment
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

LIB_NAME = 'masked_opt._native.libmasked_opt_ops'
# One library from every source: ops.cc (the masked update's block ops), dense_cols.cc (the
# dense column-block update), lookup.cc (the O(batch) embedding lookup), error_messages.cc
# (the messages of failed calls, handed to MXNet once) and mxnet_lib_api.cc (MXNet's
# src/lib_api.cc, less the message store error_messages.cc replaces).
SOURCES = [os.path.join('masked_opt', '_native', name)
           for name in ('ops.cc', 'dense_cols.cc', 'lookup.cc', 'error_messages.cc',
                        'mxnet_lib_api.cc')]


def _mxnet_root():
    """The installed mxnet package directory, found without importing mxnet (or None)."""
    try:
        spec = importlib.util.find_spec('mxnet')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


class BuildNative(build_ext):
    """Compile the library with $CXX; on any failure warn once and build nothing."""

    def get_ext_filename(self, fullname):
        # A plain .so, no CPython ABI suffix (it is no Python module). Called with the full
        # dotted name and, from get_ext_fullpath, with its last part only.
        if fullname in (LIB_NAME, LIB_NAME.rsplit('.', 1)[1]):
            return os.path.join(*fullname.split('.')) + '.so'
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name != LIB_NAME:
            return super().build_extension(ext)
        self.distribution.masked_opt_native_built = False
        out = self.get_ext_fullpath(ext.name)
        if os.path.exists(out):  # never ship a library of an earlier build (pip reuses build/)
            os.remove(out)
        os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
        reason = self._compile(ext, out)
        if reason is None:
            self.distribution.masked_opt_native_built = True
        else:
            sys.stderr.write('WARNING: masked_opt: native ops not built (%s); masked_opt works '
                             'without them, on its slower pure path\n' % reason)

    def _compile(self, ext, out):
        root = _mxnet_root()
        if root is None:
            return 'mxnet is not installed in the build environment'
        include = os.path.join(root, 'include')
        lib_api = os.path.join(root, 'src', 'lib_api.cc')
        if not (os.path.isfile(os.path.join(include, 'mxnet', 'lib_api.h'))
                and os.path.isfile(lib_api)):
            return 'mxnet at %s has no include/mxnet/lib_api.h or src/lib_api.cc' % root
        cxx = shlex.split(os.environ.get('CXX') or 'g++')
        # -Bsymbolic: the library's calls into lib_api.cc bind to its own copy. Without it, a
        # process where libmxnet was loaded with RTLD_GLOBAL (import horovod.mxnet does that)
        # resolves them to libmxnet's same-named symbols, and mx.library.load segfaults.
        # -ffp-contract=off: no fused multiply-add, ever (dense_cols.cc reproduces MXNet's
        # kernels bit for bit, and the wheel's kernels round every product).
        cmd = cxx + ['-std=c++11', '-shared', '-fPIC', '-O2', '-ffp-contract=off',
                     '-Wl,-Bsymbolic', '-I', include, '-I', os.path.dirname(lib_api)] + \
            list(ext.sources) + ['-o', out]
        print(' '.join(shlex.quote(c) for c in cmd))
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True)
        except OSError as e:
            return 'C++ compiler %r not runnable: %s' % (cxx[0], e.strerror or e)
        if proc.returncode != 0:
            if proc.stdout:
                sys.stderr.write(proc.stdout)
            if os.path.exists(out):
                os.remove(out)
            return '%s exited with status %d' % (cxx[0], proc.returncode)
        return None


cmdclass = {'build_ext': BuildNative}

if bdist_wheel is not None:
    class BdistWheel(bdist_wheel):
        """A wheel is platform-specific only if it carries the library."""

        def get_tag(self):
            if getattr(self.distribution, 'masked_opt_native_built', True) is False:
                self.root_is_pure = True
            return super().get_tag()

    cmdclass['bdist_wheel'] = BdistWheel

# optional: an in-place (editable) build copies the library into the tree only if it was built
setup(ext_modules=[Extension(LIB_NAME, sources=SOURCES, language='c++', optional=True)],
      cmdclass=cmdclass)
