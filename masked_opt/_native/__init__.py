"""The native operators' source (ops.cc) and, once built, libmasked_opt_ops.so; see masked_opt.native."""
