"""The scripts here run only under horovodrun (tests/test_horovod.py); pytest must not import
them, as ``--doctest-modules`` would. ``horovod.mxnet`` loads Horovod's library with
RTLD_GLOBAL, which puts libmxnet.so's symbols in the global scope; masked_opt's native
library, loaded later in the same process, then binds to them and crashes in its static
initialisers (seen as a segfault while the whole suite was being collected)."""
collect_ignore_glob = ['*.py']
