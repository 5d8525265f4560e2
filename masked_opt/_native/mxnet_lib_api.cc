/*
 * MXNet 1.9.1's src/lib_api.cc (the extension API's library side, shipped in the mxnet wheel),
 * compiled into this library as it is except for its error-message store: the class and the
 * two C functions MXNet reads the messages through are renamed here, out of the way, and
 * error_messages.cc defines the ones the library uses (it explains why: lib_api.cc's store
 * leaks on every operator call once any call has failed). This is the library's one
 * workaround for lib_api.cc; everything else of it is used unchanged.
 *
 * The messages of lib_api.cc's own JSON parser (used by graph passes and subgraph operators,
 * which this library has none of) stay in the renamed store and are never reported.
 */
#define MXerrorMsgs MXerrorMsgsOfLibApi
#define _msgSize masked_opt_unused_lib_api_msgSize
#define _msgGet masked_opt_unused_lib_api_msgGet
#include <lib_api.cc>  // found through -I <mxnet>/src, see setup.py
