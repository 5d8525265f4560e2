"""The native operators' source (ops.cc) and, once built, libmasked_opt_ops.so.

See :mod:`masked_opt.native`.
"""
