/*
 * masked_opt_lookup: MXNet's Embedding (and contrib.SparseEmbedding) with an O(batch) backward.
 * Part of the masked_opt extension library (built with ops.cc, see setup.py); no MXNet source.
 *
 *   masked_opt_lookup(data, weight; input_dim, output_dim[, dtype, sparse_grad, deterministic])
 *     forward   out[..., :] = weight[id]: the bits of MXNet 1.9.1's Embedding forward
 *     backward  a row_sparse weight gradient holding the batch's unique ids in ascending order,
 *               each row the sum of its output-gradient rows: the bits of
 *               Embedding(sparse_grad=True)'s gradient, in O(batch * dim + batch log batch).
 *
 * Why: MXNet 1.9.1's CPU backward of a row_sparse weight gradient
 * (SparseEmbeddingOpBackwardRspImpl<cpu>, src/operator/tensor/indexing_op.cc) allocates a
 * table-rows-sized workspace, fills it, takes a serial prefix sum over it and scans it again:
 * three passes over the table per step, whatever the batch. This backward sorts the batch.
 *
 * Bits (MXNet's AddTakeGradRspKernel): each kept row starts at +0.0 and the output-gradient
 * rows of its id are added in ascending batch position with a plain `+=` (no FMA: only adds).
 * Sorting the (id, position) pairs gives that order; starting at +0.0 keeps MXNet's sign of
 * zero ((+0.0) + (-0.0) is +0.0).
 *
 * Ids, as MXNet 1.9.1 treats them (indexing_op.cc/.h):
 *   forward, dense weight: static_cast<int64_t>(id) clipped to [0, V-1] (TakeZeroAxisCPU); a
 *     float id truncates, and a NaN or out-of-int64-range id gives x86's INT64_MIN, so row 0.
 *   forward, row_sparse weight, and backward: CheckIndexOutOfBound in the id's own dtype
 *     against static_cast<IType>(V - 1) (so uint8 ids with V = 300 fail above 43, and a float
 *     id 4.5 with V = 5 fails); an id outside is an error.
 *   NaN ids pass MXNet's backward check and index its workspace at INT64_MIN: undefined
 *     behaviour there, an error here. A float16 weight's backward: MXNet refuses it, so do we.
 *
 * Reentrant: no state outside the call (two lookups may run at once on the engine's threads).
 * The op cannot see `req`: the Python side (masked_opt/convert.py) refuses grad_req='add'.
 */
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mxnet/lib_api.h"

#include "attrs.h"

using namespace mxnet::ext;

namespace {

typedef std::unordered_map<std::string, std::string> Attrs;
typedef std::vector<std::vector<unsigned int> > Shapes;

const char* kLookup = "masked_opt_lookup";

// ------------------------------------------------------------------------ attributes
// Embedding's input_dim / output_dim (MXNet's EmbeddingParam holds them as int).
bool get_dim(const Attrs& attrs, const char* key, int64_t* out) {
  return masked_opt_native::get_int(attrs, kLookup, key, 1, 0x7fffffffLL, "in [1, 2^31)",
                                    " (Embedding's)", out);
}

// Embedding's `dtype` attribute: a name ("float32", from Gluon and JSON), a type code, or -1
// (unknown). Used only when the weight's dtype is not known yet, as MXNet's EmbeddingOpType.
bool get_dtype(const Attrs& attrs, int* out) {
  *out = kFloat32;
  auto it = attrs.find("dtype");
  if (it == attrs.end() || it->second == "-1" || it->second == "None") return true;
  static const char* names[] = {"float32", "float64", "float16", "uint8", "int32", "int8",
                                "int64"};
  for (int code = 0; code < 7; ++code) {
    if (it->second == names[code] || it->second == std::to_string(code)) {
      *out = code;
      return true;
    }
  }
  MX_ERROR_MSG << kLookup << ": attribute 'dtype' must be a dtype name such as 'float32', got '"
               << it->second << "'";
  return false;
}

// ------------------------------------------------------------------------ ids
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000 | (mant << 13);                 // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);        // normal
  } else if (mant == 0) {
    bits = sign;                                             // +-0
  } else {                                                   // subnormal: normalise
    exp = 113;
    while (!(mant & 0x400)) { mant <<= 1; --exp; }
    bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// mshadow's float2half for a non-negative integer-valued float (round to nearest even; the
// values above float16's range become +inf): how MXNet computes static_cast<half_t>(V - 1).
float half_round(float f) {
  uint32_t v;
  std::memcpy(&v, &f, 4);
  if (v <= 0x33000000u) return 0.0f;
  if (v > 0x477FFFFFu) return half_to_float(0x7c00);
  v += (v & 0x3fff) != 0x1000 ? 0x1000 : 0;
  v -= 112u << 23;
  return half_to_float(static_cast<uint16_t>((v >> 13) & 0x7fff));
}

// static_cast<int64_t>(x) as x86-64 does it for every x (cvttsd2si): a NaN or a value outside
// int64's range gives INT64_MIN. Written out because the cast itself is undefined there.
int64_t x86_to_int64(double x) {
  if (x >= -9223372036854775808.0 && x < 9223372036854775808.0) return static_cast<int64_t>(x);
  return INT64_MIN;
}

// Per id dtype: the id as a double (exact for every dtype but int64), the row MXNet reads
// (before clipping) and MXNet's bound check against static_cast<IType>(V - 1).
template <typename T> struct Ids {
  static int64_t row(T v) { return static_cast<int64_t>(v); }
  static bool in_bounds(T v, int64_t V) { return !(v > static_cast<T>(V - 1) || v < T(0)); }
  static bool is_nan(T) { return false; }
};
template <> struct Ids<float> {
  static int64_t row(float v) { return x86_to_int64(v); }
  static bool in_bounds(float v, int64_t V) {
    return !(v > static_cast<float>(V - 1) || v < 0.0f);
  }
  static bool is_nan(float v) { return v != v; }
};
template <> struct Ids<double> {
  static int64_t row(double v) { return x86_to_int64(v); }
  static bool in_bounds(double v, int64_t V) {
    return !(v > static_cast<double>(V - 1) || v < 0.0);
  }
  static bool is_nan(double v) { return v != v; }
};
struct Half { uint16_t bits; };
template <> struct Ids<Half> {
  static int64_t row(Half v) { return x86_to_int64(half_to_float(v.bits)); }
  static bool in_bounds(Half v, int64_t V) {
    const float f = half_to_float(v.bits);
    return !(f > half_round(static_cast<float>(V - 1)) || f < 0.0f);
  }
  static bool is_nan(Half v) { return (v.bits & 0x7c00) == 0x7c00 && (v.bits & 0x3ff); }
};

template <typename T>
std::string show(T v) { return std::to_string(v); }
template <> std::string show(Half v) { return std::to_string(half_to_float(v.bits)); }
template <> std::string show(uint8_t v) { return std::to_string(static_cast<int>(v)); }
template <> std::string show(int8_t v) { return std::to_string(static_cast<int>(v)); }

const char* id_dtype_name(int t) {
  static const char* names[] = {"float32", "float64", "float16", "uint8", "int32", "int8",
                                "int64"};
  return (t >= 0 && t < 7) ? names[t] : "unsupported";
}

// MXNet's CheckIndexOutOfBound, and a NaN refused where MXNet's behaviour is undefined.
template <typename T>
bool check_ids(const T* ids, int64_t n, int64_t V, int dtype, bool refuse_nan) {
  for (int64_t i = 0; i < n; ++i) {
    if (refuse_nan && Ids<T>::is_nan(ids[i])) {
      MX_ERROR_MSG << kLookup << ": id at position " << i << " is NaN; MXNet 1.9.1's sparse "
                   << "Embedding backward reads outside its buffer for it (undefined), so the "
                   << "lookup refuses it. Give ids that are numbers in [0, " << V - 1 << "]";
      return false;
    }
    if (!Ids<T>::in_bounds(ids[i], V)) {
      MX_ERROR_MSG << kLookup << ": id " << show(ids[i]) << " at position " << i
                   << " is outside [0, " << V - 1 << "] as MXNet checks it (in the ids' dtype "
                   << id_dtype_name(dtype) << ", against " << V - 1 << " cast to it); MXNet's "
                   << "Embedding refuses it too ('input contains data out of bound'). Give ids "
                   << "in range (or ids of a dtype that can hold " << V - 1 << ")";
      return false;
    }
  }
  return true;
}

// Runs BODY with T the C++ type of the ids' dtype code (MSHADOW_TYPE_SWITCH's list); C++11
// has no generic lambdas.
#define LOOKUP_ID_SWITCH(code, T, ...)                        \
  switch (code) {                                             \
    case kFloat32: { typedef float T; __VA_ARGS__ } break;    \
    case kFloat64: { typedef double T; __VA_ARGS__ } break;   \
    case kFloat16: { typedef Half T; __VA_ARGS__ } break;     \
    case kUint8: { typedef uint8_t T; __VA_ARGS__ } break;    \
    case kInt32: { typedef int32_t T; __VA_ARGS__ } break;    \
    case kInt8: { typedef int8_t T; __VA_ARGS__ } break;      \
    case kInt64: { typedef int64_t T; __VA_ARGS__ } break;    \
    default: break;                                           \
  }

bool is_id_type(int t) { return t >= kFloat32 && t <= kInt64; }
bool is_float_type(int t) { return t == kFloat16 || t == kFloat32 || t == kFloat64; }
size_t elem_size(int t) { return t == kFloat16 ? 2 : (t == kFloat32 ? 4 : 8); }

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// ------------------------------------------------------------------------ callbacks
MXReturnValue lookup_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  int64_t v, d;
  // `dtype` is read only if the weight's dtype is unknown (lookup_type): ignored otherwise.
  return get_dim(attrs, "input_dim", &v) && get_dim(attrs, "output_dim", &d) ? MX_SUCCESS
                                                                              : MX_FAIL;
}

MXReturnValue lookup_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  if (!is_id_type(in->at(0))) {
    MX_ERROR_MSG << kLookup << ": ids (input 0) must be float16/32/64, uint8, int8, int32 or "
                 << "int64 (as Embedding takes them), got dtype code " << in->at(0);
    return MX_FAIL;
  }
  if (in->at(1) == -1 && !get_dtype(attrs, &in->at(1))) return MX_FAIL;
  if (!is_float_type(in->at(1))) {
    MX_ERROR_MSG << kLookup << ": weight (input 1) must be float16, float32 or float64, got "
                 << "dtype code " << in->at(1) << "; leave such a table an Embedding";
    return MX_FAIL;
  }
  out->at(0) = in->at(1);
  return MX_SUCCESS;
}

MXReturnValue lookup_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  int64_t V, D;
  if (!get_dim(attrs, "input_dim", &V) || !get_dim(attrs, "output_dim", &D)) return MX_FAIL;
  const std::vector<unsigned int>& w = in->at(1);
  if (w.size() != 2 || w[0] != V || w[1] != D) {
    MX_ERROR_MSG << kLookup << ": weight (input 1) must have shape (input_dim, output_dim) = ("
                 << V << ", " << D << "), got a " << w.size() << "-D shape"
                 << (w.size() == 2 ? " (" + std::to_string(w[0]) + ", " +
                     std::to_string(w[1]) + ")" : std::string());
    return MX_FAIL;
  }
  std::vector<unsigned int> o(in->at(0));
  o.push_back(static_cast<unsigned int>(D));
  out->at(0) = o;
  return MX_SUCCESS;
}

// One callback for the forward (data, weight -> out) and for the backward MXNet generates
// from setBackward, `_backward_masked_opt_lookup` (ograd, data, weight, out -> data_grad,
// weight_grad): declaring the weight gradient row_sparse is what makes Module, CachedOp and
// autograd hand the backward a row_sparse buffer.
MXReturnValue lookup_stype(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  const bool backward = in->size() == 4;
  const size_t d = backward ? 1 : 0, w = backward ? 2 : 1;
  if (in->at(d) != kDefaultStorage ||
      (in->at(w) != kDefaultStorage && in->at(w) != kRowSparseStorage) ||
      (backward && in->at(0) != kDefaultStorage)) {
    MX_ERROR_MSG << kLookup << ": need dense ids and a dense or row_sparse weight"
                 << (backward ? " and a dense output gradient" : "");
    return MX_FAIL;
  }
  out->at(0) = kDefaultStorage;
  if (backward) out->at(1) = kRowSparseStorage;
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------ forward
template <typename T>
int64_t clipped_row(T id, int64_t V) {
  int64_t j = Ids<T>::row(id);
  if (j <= 0) j = 0;
  else if (j >= V) j = V - 1;
  return j;
}

// Rows of a 10M-row table are cache and TLB misses: ask for the row kPrefetch ids ahead while
// copying this one, so the misses overlap instead of queueing (only loads; bits unchanged).
const int64_t kPrefetch = 8;

template <typename T>
void take_dense(const T* ids, int64_t n, const char* w, int64_t V, size_t row_bytes, char* o) {
  for (int64_t i = 0; i < n; ++i) {
    if (i + kPrefetch < n) __builtin_prefetch(w + clipped_row(ids[i + kPrefetch], V) * row_bytes);
    std::memcpy(o + i * row_bytes, w + clipped_row(ids[i], V) * row_bytes, row_bytes);
  }
}

// A row_sparse weight (SparseEmbedding, or Embedding given one): a stored row is copied, an
// absent one gives +0.0 (TakeRspKernel).
template <typename T>
void take_rsp(const T* ids, int64_t n, const MXSparse* W, size_t row_bytes, char* o) {
  const int64_t* first = W->indices;
  const int64_t* last = W->indices + W->indices_len;
  const char* wd = static_cast<const char*>(W->data);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = Ids<T>::row(ids[i]);
    const int64_t* it = std::lower_bound(first, last, j);
    if (it == last || *it != j) std::memset(o + i * row_bytes, 0, row_bytes);
    else std::memcpy(o + i * row_bytes, wd + (it - first) * row_bytes, row_bytes);
  }
}

MXReturnValue lookup_forward(const Attrs&, std::vector<MXTensor>* inputs,
                             std::vector<MXTensor>* outputs, const OpResource&) {
  const MXTensor& data = inputs->at(0);
  const MXTensor& weight = inputs->at(1);
  MXTensor& out = outputs->at(0);
  const int64_t n = numel(data.shape), V = weight.shape[0], D = weight.shape[1];
  const size_t row_bytes = static_cast<size_t>(D) * elem_size(weight.dtype);
  char* o = static_cast<char*>(out.data_ptr);
  bool ok = is_id_type(data.dtype) && is_float_type(weight.dtype);
  if (!ok) MX_ERROR_MSG << kLookup << ": unsupported ids or weight dtype";
  if (weight.stype == kRowSparseStorage) {
    const MXSparse* W = inputs->at(1).data<MXSparse>();
    if (W->indices_len == 0) {   // storage not initialised: MXNet returns zeros, unchecked
      std::memset(o, 0, static_cast<size_t>(n) * row_bytes);
      return MX_SUCCESS;
    }
    LOOKUP_ID_SWITCH(data.dtype, T, {
      const T* ids = static_cast<const T*>(data.data_ptr);
      ok = check_ids(ids, n, V, data.dtype, false);
      if (ok) take_rsp(ids, n, W, row_bytes, o);
    })
  } else {
    LOOKUP_ID_SWITCH(data.dtype, T, {
      take_dense(static_cast<const T*>(data.data_ptr), n,
                 static_cast<const char*>(weight.data_ptr), V, row_bytes, o);
    })
  }
  return ok ? MX_SUCCESS : MX_FAIL;
}

// ------------------------------------------------------------------------ backward
template <typename DType>
void sum_rows(const std::vector<std::pair<int64_t, int64_t> >& pairs, const DType* ograd,
              int64_t D, int64_t* rows, DType* grad) {
  int64_t r = -1;
  DType* g = grad - D;
  for (const auto& p : pairs) {
    if (r < 0 || rows[r] != p.first) {
      ++r;
      rows[r] = p.first;
      g += D;
      for (int64_t k = 0; k < D; ++k) g[k] = DType(0);   // +0.0, as MXNet's Fill
    }
    const DType* src = ograd + p.second * D;
    for (int64_t k = 0; k < D; ++k) g[k] += src[k];
  }
}

MXReturnValue lookup_backward(const Attrs&, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource& res) {
  const MXTensor& ograd = inputs->at(0);
  const MXTensor& data = inputs->at(1);
  const MXTensor& weight = inputs->at(2);
  MXTensor& wgrad = outputs->at(1);
  const int64_t n = numel(data.shape), V = weight.shape[0], D = weight.shape[1];
  if (ograd.dtype != kFloat32 && ograd.dtype != kFloat64) {
    MX_ERROR_MSG << kLookup << ": the backward takes float32 or float64 weights (MXNet 1.9.1's "
                 << "sparse Embedding backward refuses float16 too), got dtype code "
                 << ograd.dtype;
    return MX_FAIL;
  }
  if (wgrad.stype != kRowSparseStorage || ograd.dtype != wgrad.dtype ||
      numel(ograd.shape) != n * D) {
    MX_ERROR_MSG << kLookup << ": the weight gradient must be row_sparse of the weight's dtype "
                 << "and the output gradient must have the output's shape";
    return MX_FAIL;
  }
  // (id, position) pairs sorted: ids ascending, equal ids in ascending batch position.
  std::vector<std::pair<int64_t, int64_t> > pairs(static_cast<size_t>(n));
  bool ok = is_id_type(data.dtype);
  if (!ok) MX_ERROR_MSG << kLookup << ": unsupported ids dtype code " << data.dtype;
  LOOKUP_ID_SWITCH(data.dtype, T, {
    const T* ids = static_cast<const T*>(data.data_ptr);
    ok = check_ids(ids, n, V, data.dtype, true);
    for (int64_t i = 0; ok && i < n; ++i) pairs[i] = std::make_pair(Ids<T>::row(ids[i]), i);
  })
  if (!ok) return MX_FAIL;
  std::sort(pairs.begin(), pairs.end());
  int64_t nnr = 0;
  for (int64_t i = 0; i < n; ++i) nnr += (i == 0 || pairs[i].first != pairs[i - 1].first);
  // Output position 1 (the weight gradient); also for nnr == 0: a valid empty gradient.
  MXSparse* G = wgrad.data<MXSparse>();
  res.alloc_sparse(G, 1, static_cast<int>(nnr));
  if (ograd.dtype == kFloat32)
    sum_rows(pairs, static_cast<const float*>(ograd.data_ptr), D, G->indices,
             static_cast<float*>(G->data));
  else
    sum_rows(pairs, static_cast<const double*>(ograd.data_ptr), D, G->indices,
             static_cast<double*>(G->data));
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(masked_opt_lookup)
    .setForward(lookup_forward, "cpu")
    .setBackward(lookup_backward, "cpu")
    .setParseAttrs(lookup_parse)
    .setInferType(lookup_type)
    .setInferSType(lookup_stype)
    .setInferShape(lookup_shape);
