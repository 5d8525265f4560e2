"""The scripts here run only under horovodrun (tests/test_horovod.py); pytest must not import
them, as ``--doctest-modules`` would: they import ``horovod.mxnet``, which loads Horovod's
library (and libmxnet.so with it) with RTLD_GLOBAL into the test process. Before masked_opt's
native library was linked with ``-Bsymbolic``, that made it crash in its initialisers when the
whole suite was collected; the test process has no use for Horovod in any case."""
collect_ignore_glob = ['*.py']
