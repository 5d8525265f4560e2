/*
 * The library's error messages on their way to MXNet: MX_ERROR_MSG's store, replacing the one
 * in MXNet 1.9.1's src/lib_api.cc (compiled without it, see mxnet_lib_api.cc).
 *
 * Why: MXNet calls the library's _msgSize/_msgGet after *every* call into an extension
 * operator (attribute parsing, shape and type inference, each forward and backward; see
 * getExtensionMsgs in src/c_api/c_api.cc), not only after a failure, and folds every stored
 * message into the error it raises. lib_api.cc keeps every message for the life of the
 * process, in one list shared by all threads, and hands each one out as a fresh
 * `new std::string` that nobody frees. So each refused call made every later operator call
 * of the process slower and leakier: after 1000 refused calls, 2000 good lookups took 13.7 s
 * instead of 0.11 s and leaked 2.8 GB, and every later error repeated all the earlier ones.
 * (Not fixed upstream: apache/mxnet master has the same code.)
 *
 * Here the messages live per thread (MXNet reads them in the thread that made the call,
 * right after it returns) and are consumed by that read: handing out the last one empties
 * the list, its text kept valid until the next read, and nothing is allocated per read.
 * A call that fails therefore reports exactly its own messages, and a call that succeeds
 * costs one size() of an empty list.
 */
#include <sstream>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

namespace {

// The text last handed to MXNet by _msgGet: it must outlive the call (MXNet copies it).
thread_local std::string handed_out;

}  // namespace

mxnet::ext::MXerrorMsgs* mxnet::ext::MXerrorMsgs::get() {
  static thread_local MXerrorMsgs inst;
  return &inst;
}

mxnet::ext::MXerrorMsgs::~MXerrorMsgs() {
  for (std::stringstream* message : messages) delete message;
}

std::stringstream& mxnet::ext::MXerrorMsgs::add(const char* file, int line) {
  messages.push_back(new std::stringstream());
  *messages.back() << file << "[" << line << "]: ";
  return *messages.back();
}

int mxnet::ext::MXerrorMsgs::size() {
  return static_cast<int>(messages.size());
}

// Hands out message `idx` (an empty text if there is none: never throws across the C
// boundary); handing out the last one consumes the list.
const std::string* mxnet::ext::MXerrorMsgs::get(int idx) {
  const bool exists = idx >= 0 && idx < size();
  handed_out = exists ? messages[idx]->str() : std::string();
  if (exists && idx == size() - 1) {
    for (std::stringstream* message : messages) delete message;
    messages.clear();
  }
  return &handed_out;
}

MX_INT_RET _msgSize() {
  return mxnet::ext::MXerrorMsgs::get()->size();
}

MX_VOID_RET _msgGet(int idx, const char** msg) {
  *msg = mxnet::ext::MXerrorMsgs::get()->get(idx)->c_str();
}
