/*
 * masked_opt native operators: an MXNet (1.9.x) extension library, loaded with
 * mx.library.load(path). Built against the installed mxnet wheel's include/mxnet/lib_api.h,
 * compiled together with that wheel's src/lib_api.cc (see setup.py); no MXNet source here.
 *
 * Three CPU operators move a contiguous trainable block [lo, hi) x [c0, c1) of an embedding
 * table between a row_sparse gradient, a dense block and the table, without a host read:
 * they run on MXNet's engine like any FComputeEx operator, so the row ids stay on the
 * engine's side.
 *
 *   masked_opt_rsp_block(grad; lo, hi, c0, c1)          rsp (V, D) -> rsp (hi-lo, c1-c0)
 *   masked_opt_rsp_block_gather(grad, weight, scratch; lo, hi, c0, c1)
 *                                                       rsp_block, and scratch (hi-lo, c1-c0)
 *                                                       gets the weight's block at its rows
 *   masked_opt_scatter_rows(weight, block, gblock; c0)  dense (R, D), dense (R, k), rsp (R, k)
 *                                                       -> dense (R, D); in place with out=weight
 *
 * Every value is moved with memcpy: bit for bit, whatever the dtype (float16/32/64), NaN
 * payloads, infinities and -0.0 included.
 *
 * No operator reads or writes outside its arrays, whatever it is given. Shapes, dtypes and
 * storage types are checked when MXNet infers them (the call raises MXNetError at once,
 * nothing queued) and again in the forward functions. Row ids can only be checked where they
 * are read, on the engine: a row id outside the array, or ids that are not sorted and unique
 * (MXNet's row_sparse format, which RowSparseNDArray.check_format enforces but
 * row_sparse_array does not), make the operator fail before it writes anything. MXNet then
 * skips every operation queued behind it that reads its outputs (the optimizer's kernel, the
 * scatter), marks the arrays those would have written (weight, state) with the error, and
 * raises it as MXNetError at the next read of any of them (asnumpy, wait_to_read, waitall):
 * the weight and the state keep their bits. The optional string attribute `param` names
 * the parameter in that message.
 */
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

#include "attrs.h"

using namespace mxnet::ext;

// Bump on every change of an operator's name, signature or semantics: the Python loader
// (masked_opt/native.py) refuses a library whose number differs from its own (a stale build).
#define MASKED_OPT_OPS_ABI 7

extern "C" __attribute__((visibility("default"))) int masked_opt_ops_abi() {
  return MASKED_OPT_OPS_ABI;
}

namespace {

typedef std::unordered_map<std::string, std::string> Attrs;
typedef std::vector<std::vector<unsigned int> > Shapes;

using masked_opt_native::get_index;

bool is_float_type(int t) { return t == kFloat16 || t == kFloat32 || t == kFloat64; }

size_t elem_size(int t) { return t == kFloat16 ? 2 : (t == kFloat32 ? 4 : 8); }

bool check_2d(const Shapes& s, size_t i, const char* op, const char* what) {
  if (s.at(i).size() != 2) {
    MX_ERROR_MSG << op << ": " << what << " must be 2-D, got " << s.at(i).size() << "-D";
    return false;
  }
  return true;
}

bool check_float(const std::vector<int>& t, size_t i, const char* op, const char* what) {
  if (!is_float_type(t.at(i))) {
    MX_ERROR_MSG << op << ": " << what << " must be float16, float32 or float64 (dtype code "
                 << t.at(i) << ")";
    return false;
  }
  return true;
}

// " of parameter 'name'" when the optional attribute `param` is set, else "".
std::string param_of(const Attrs& attrs) {
  auto it = attrs.find("param");
  return it == attrs.end() ? std::string() : " of parameter '" + it->second + "'";
}

// The row ids of a row_sparse array with `rows` rows must be sorted, unique and in
// [0, rows): MXNet's row_sparse format. Everything below binary-searches them and uses them
// as offsets, so anything else is refused before a byte is read or written through them.
bool check_rsp_ids(const char* op, const Attrs& attrs, const MXSparse* A, int64_t rows,
                   const char* what) {
  const int64_t* ids = A->indices;
  for (int64_t j = 0; j < A->indices_len; ++j) {
    const bool out = ids[j] < 0 || ids[j] >= rows;
    if (!out && (j == 0 || ids[j] > ids[j - 1])) continue;
    std::ostringstream msg;   // one message: each MX_ERROR_MSG is a line of its own
    msg << op << ": the row_sparse " << what << param_of(attrs)
        << " is malformed: expected row ids sorted, unique and in [0, " << rows
        << ") (MXNet's row_sparse format, see RowSparseNDArray.check_format), received id "
        << ids[j] << " at position " << j;
    if (!out) msg << " after id " << ids[j - 1];
    msg << ". Nothing was written. Build the array from sorted unique ids in range "
        << "(numpy.unique(ids, return_inverse=True) and numpy.add.at sum the rows of repeated "
        << "ids).";
    MX_ERROR_MSG << msg.str();
    return false;
  }
  return true;
}

// The forward functions check what they index with again: shapes and dtypes were inferred
// before the call, but an operator must not trust them blindly.
bool check_2d_tensor(const char* op, const MXTensor& t, const char* what) {
  if (t.shape.size() != 2 || !is_float_type(t.dtype)) {
    MX_ERROR_MSG << op << ": " << what << " must be a 2-D float16/32/64 array, got "
                 << t.shape.size() << "-D of dtype code " << t.dtype;
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- masked_opt_rsp_block
const char* kBlock = "masked_opt_rsp_block";

MXReturnValue block_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  int64_t lo, hi, c0, c1;
  if (!get_index(attrs, kBlock, "lo", &lo) || !get_index(attrs, kBlock, "hi", &hi) ||
      !get_index(attrs, kBlock, "c0", &c0) || !get_index(attrs, kBlock, "c1", &c1))
    return MX_FAIL;
  if (lo >= hi || c0 >= c1) {
    MX_ERROR_MSG << kBlock << ": need lo < hi and c0 < c1, got lo=" << lo << " hi=" << hi
                 << " c0=" << c0 << " c1=" << c1;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

MXReturnValue block_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!check_float(*in, 0, kBlock, "grad")) return MX_FAIL;
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

MXReturnValue block_stype(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (in->at(0) != kRowSparseStorage) {
    MX_ERROR_MSG << kBlock << ": grad must be row_sparse";
    return MX_FAIL;
  }
  out->at(0) = kRowSparseStorage;
  return MX_SUCCESS;
}

MXReturnValue block_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  if (!check_2d(*in, 0, kBlock, "grad")) return MX_FAIL;
  int64_t lo, hi, c0, c1;
  get_index(attrs, kBlock, "lo", &lo);
  get_index(attrs, kBlock, "hi", &hi);
  get_index(attrs, kBlock, "c0", &c0);
  get_index(attrs, kBlock, "c1", &c1);
  const int64_t V = in->at(0)[0], D = in->at(0)[1];
  if (!(0 <= lo && lo < hi && hi <= V && 0 <= c0 && c0 < c1 && c1 <= D)) {
    MX_ERROR_MSG << kBlock << ": need 0 <= lo < hi <= V and 0 <= c0 < c1 <= D for grad of shape ("
                 << V << ", " << D << "), got lo=" << lo << " hi=" << hi << " c0=" << c0
                 << " c1=" << c1;
    return MX_FAIL;
  }
  out->at(0) = {static_cast<unsigned int>(hi - lo), static_cast<unsigned int>(c1 - c0)};
  return MX_SUCCESS;
}

// rsp_block's work, for `op` (rsp_block or rsp_block_gather, named in the messages).
MXReturnValue block_impl(const char* op, const Attrs& attrs, std::vector<MXTensor>* inputs,
                         std::vector<MXTensor>* outputs, const OpResource& res) {
  int64_t lo, hi, c0, c1;
  if (!get_index(attrs, op, "lo", &lo) || !get_index(attrs, op, "hi", &hi) ||
      !get_index(attrs, op, "c0", &c0) || !get_index(attrs, op, "c1", &c1))
    return MX_FAIL;
  MXTensor& src = inputs->at(0);
  MXTensor& dst = outputs->at(0);
  if (!check_2d_tensor(op, src, "grad") || !check_2d_tensor(op, dst, "output"))
    return MX_FAIL;
  MXSparse* A = src.data<MXSparse>();
  MXSparse* B = dst.data<MXSparse>();
  const int64_t V = src.shape[0], D = src.shape[1];
  const int64_t k = c1 - c0;
  const size_t es = elem_size(src.dtype);
  if (!(lo < hi && hi <= V && c0 < c1 && c1 <= D) || dst.dtype != src.dtype ||
      dst.shape[0] != hi - lo || dst.shape[1] != k) {
    MX_ERROR_MSG << op << ": rows [" << lo << ", " << hi << ") x columns [" << c0 << ", "
                 << c1 << ") do not fit grad of shape (" << V << ", " << D
                 << ") and an output of the block's shape and grad's dtype";
    return MX_FAIL;
  }
  if (!check_rsp_ids(op, attrs, A, V, "gradient")) return MX_FAIL;
  // Sorted unique ids (checked above): the kept rows are one run [b, e).
  const int64_t* ids = A->indices;
  const int64_t* b = std::lower_bound(ids, ids + A->indices_len, lo);
  const int64_t* e = std::lower_bound(b, ids + A->indices_len, hi);
  const int64_t n = e - b;
  if (n > 2147483647) {   // alloc_sparse takes an int
    MX_ERROR_MSG << op << ": " << n << " rows in the block, at most 2^31 - 1 supported";
    return MX_FAIL;
  }
  // Always allocate, also for n == 0: the output is then a valid empty row_sparse array.
  res.alloc_sparse(B, 0, static_cast<int>(n));
  const char* sdata = static_cast<const char*>(A->data);
  char* ddata = static_cast<char*>(B->data);
  const int64_t first = b - ids;
  for (int64_t j = 0; j < n; ++j) {
    B->indices[j] = ids[first + j] - lo;
    std::memcpy(ddata + j * k * es, sdata + ((first + j) * D + c0) * es, k * es);
  }
  return MX_SUCCESS;
}

MXReturnValue block_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                            std::vector<MXTensor>* outputs, const OpResource& res) {
  return block_impl(kBlock, attrs, inputs, outputs, res);
}

// ------------------------------------------------ shared by rsp_block_gather and scatter_rows
// All inputs share one float dtype (a row_sparse block's values are not read, its ids are).
MXReturnValue same_float_types(const char* op, std::vector<int>* in, std::vector<int>* out) {
  if (!check_float(*in, 0, op, "weight")) return MX_FAIL;
  for (size_t i = 1; i < in->size(); ++i) {
    if (in->at(i) != in->at(0)) {
      MX_ERROR_MSG << op << ": input " << i << " has dtype code " << in->at(i)
                   << ", weight has " << in->at(0) << " (all inputs must share one dtype)";
      return MX_FAIL;
    }
  }
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

// weight (R, D) at input 0, gblock (R, k) at input `g`.
bool rows_shape(const char* op, const Attrs& attrs, const Shapes& in, size_t g, int64_t* k) {
  if (!check_2d(in, 0, op, "weight") || !check_2d(in, g, op, "gblock")) return false;
  int64_t c0;
  if (!get_index(attrs, op, "c0", &c0)) return false;
  const int64_t R = in[0][0], D = in[0][1];
  *k = in[g][1];
  if (in[g][0] != in[0][0] || *k > D || c0 > D - *k) {   // c0 + k may overflow
    MX_ERROR_MSG << op << ": gblock of shape (" << in[g][0] << ", " << *k
                 << ") does not fit weight of shape (" << R << ", " << D << ") at column c0="
                 << c0 << " (need the same rows and c0 + k <= D)";
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- masked_opt_scatter_rows
const char* kScatter = "masked_opt_scatter_rows";

MXReturnValue scatter_parse(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  int64_t c0;
  return get_index(attrs, kScatter, "c0", &c0) ? MX_SUCCESS : MX_FAIL;
}

MXReturnValue scatter_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return same_float_types(kScatter, in, out);
}

MXReturnValue scatter_stype(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (in->at(0) != kDefaultStorage || in->at(1) != kDefaultStorage ||
      in->at(2) != kRowSparseStorage) {
    MX_ERROR_MSG << kScatter << ": need a dense weight, a dense block and a row_sparse gblock";
    return MX_FAIL;
  }
  out->at(0) = kDefaultStorage;
  return MX_SUCCESS;
}

MXReturnValue scatter_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  int64_t k;
  if (!rows_shape(kScatter, attrs, *in, 2, &k)) return MX_FAIL;
  if (!check_2d(*in, 1, kScatter, "block")) return MX_FAIL;
  if (in->at(1) != in->at(2)) {
    MX_ERROR_MSG << kScatter << ": block of shape (" << in->at(1)[0] << ", " << in->at(1)[1]
                 << ") must have gblock's shape (" << in->at(2)[0] << ", " << in->at(2)[1] << ")";
    return MX_FAIL;
  }
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

MXReturnValue scatter_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource&) {
  int64_t c0;
  if (!get_index(attrs, kScatter, "c0", &c0)) return MX_FAIL;
  MXTensor& w = inputs->at(0);
  MXTensor& blk = inputs->at(1);
  MXTensor& gb = inputs->at(2);
  MXTensor& out = outputs->at(0);
  if (!check_2d_tensor(kScatter, w, "weight") || !check_2d_tensor(kScatter, blk, "block") ||
      !check_2d_tensor(kScatter, gb, "gblock") || !check_2d_tensor(kScatter, out, "output"))
    return MX_FAIL;
  const int64_t R = w.shape[0], D = w.shape[1], k = blk.shape[1];
  if (blk.shape[0] != R || gb.shape != blk.shape || k > D || c0 > D - k ||
      out.shape != w.shape || blk.dtype != w.dtype || out.dtype != w.dtype) {
    MX_ERROR_MSG << kScatter << ": block (" << blk.shape[0] << ", " << k << ") at column c0="
                 << c0 << " does not fit weight (" << R << ", " << D
                 << "), or gblock, output or a dtype disagrees with them";
    return MX_FAIL;
  }
  const size_t es = elem_size(w.dtype);
  MXSparse* G = gb.data<MXSparse>();
  if (!check_rsp_ids(kScatter, attrs, G, R, "gblock")) return MX_FAIL;
  char* dst = static_cast<char*>(out.data_ptr);
  // out=weight (the in-place call) hands the op the same memory as input and output; any other
  // output first receives a copy of weight (the functional form, O(R x D)).
  if (out.data_ptr != w.data_ptr)
    std::memmove(dst, w.data_ptr, static_cast<size_t>(R * D) * es);
  const char* src = static_cast<const char*>(blk.data_ptr);
  for (int64_t j = 0; j < G->indices_len; ++j) {
    const int64_t r = G->indices[j];
    std::memmove(dst + (r * D + c0) * es, src + r * k * es, k * es);   // block may alias
  }
  return MX_SUCCESS;
}

// ---------------------------------------------------------- masked_opt_rsp_block_gather
// The column path's first operation: the block's gradient rows come out as the row_sparse
// output (as rsp_block), and the same rows of the weight's column block are copied into
// `scratch` (input 2, mutated: MXNet orders it as a write). One operation instead of a re-key
// and a separate gather: each call costs ~30 us of dispatch.
const char* kBlockGather = "masked_opt_rsp_block_gather";

MXReturnValue block_gather_parse(const Attrs& attrs, int* num_in, int* num_out) {
  if (block_parse(attrs, num_in, num_out) != MX_SUCCESS) return MX_FAIL;
  *num_in = 3;
  return MX_SUCCESS;
}

MXReturnValue block_gather_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return same_float_types(kBlockGather, in, out);
}

MXReturnValue block_gather_stype(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (in->at(0) != kRowSparseStorage || in->at(1) != kDefaultStorage ||
      in->at(2) != kDefaultStorage) {
    MX_ERROR_MSG << kBlockGather << ": need a row_sparse grad, a dense weight and a dense "
                 << "scratch";
    return MX_FAIL;
  }
  out->at(0) = kRowSparseStorage;
  return MX_SUCCESS;
}

MXReturnValue block_gather_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  if (block_shape(attrs, in, out) != MX_SUCCESS) return MX_FAIL;
  if (!check_2d(*in, 1, kBlockGather, "weight") || !check_2d(*in, 2, kBlockGather, "scratch"))
    return MX_FAIL;
  if (in->at(1) != in->at(0) || in->at(2) != out->at(0)) {
    MX_ERROR_MSG << kBlockGather << ": weight must have grad's shape and scratch the block's ("
                 << out->at(0)[0] << ", " << out->at(0)[1] << ")";
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

MXReturnValue block_gather_mutate(const Attrs&, std::vector<int>* inputs) {
  inputs->push_back(2);
  return MX_SUCCESS;
}

MXReturnValue block_gather_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  int64_t lo, hi, c0, c1;
  if (!get_index(attrs, kBlockGather, "lo", &lo) || !get_index(attrs, kBlockGather, "hi", &hi) ||
      !get_index(attrs, kBlockGather, "c0", &c0) || !get_index(attrs, kBlockGather, "c1", &c1))
    return MX_FAIL;
  MXTensor& g = inputs->at(0);
  MXTensor& w = inputs->at(1);
  MXTensor& scratch = inputs->at(2);
  // The weight must have grad's shape and the scratch the block's, both of grad's dtype;
  // block_impl checks grad, the ranges and the ids.
  if (!check_2d_tensor(kBlockGather, w, "weight") ||
      !check_2d_tensor(kBlockGather, scratch, "scratch"))
    return MX_FAIL;
  if (w.shape != g.shape || w.dtype != g.dtype || scratch.dtype != g.dtype ||
      scratch.shape[0] != hi - lo || scratch.shape[1] != c1 - c0) {
    MX_ERROR_MSG << kBlockGather << ": weight must have grad's shape and scratch the block's ("
                 << hi - lo << ", " << c1 - c0 << "), both of grad's dtype";
    return MX_FAIL;
  }
  if (block_impl(kBlockGather, attrs, inputs, outputs, res) != MX_SUCCESS) return MX_FAIL;
  // The kept rows again from the input's ids: alloc_sparse sets the output's data and
  // indices pointers but not its indices_len.
  const MXSparse* A = g.data<MXSparse>();
  const int64_t* ids = A->indices;
  const int64_t* b = std::lower_bound(ids, ids + A->indices_len, lo);
  const int64_t* e = std::lower_bound(b, ids + A->indices_len, hi);
  const int64_t D = w.shape[1], k = scratch.shape[1];
  const size_t es = elem_size(w.dtype);
  const char* src = static_cast<const char*>(w.data_ptr);
  char* dst = static_cast<char*>(scratch.data_ptr);
  for (const int64_t* p = b; p < e; ++p) {
    const int64_t r = *p - lo;   // block row; weight row *p
    std::memmove(dst + r * k * es, src + ((r + lo) * D + c0) * es, k * es);   // may alias
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(masked_opt_rsp_block_gather)
    .setForward(block_gather_forward, "cpu")
    .setParseAttrs(block_gather_parse)
    .setInferType(block_gather_type)
    .setInferSType(block_gather_stype)
    .setInferShape(block_gather_shape)
    .setMutateInputs(block_gather_mutate);

REGISTER_OP(masked_opt_rsp_block)
    .setForward(block_forward, "cpu")
    .setParseAttrs(block_parse)
    .setInferType(block_type)
    .setInferSType(block_stype)
    .setInferShape(block_shape);

REGISTER_OP(masked_opt_scatter_rows)
    .setForward(scatter_forward, "cpu")
    .setParseAttrs(scatter_parse)
    .setInferType(scatter_type)
    .setInferSType(scatter_stype)
    .setInferShape(scatter_shape);

MXReturnValue initialize(int version) {
  if (version >= 10900) return MX_SUCCESS;
  MX_ERROR_MSG << "masked_opt native ops need MXNet >= 1.9.0, this is version " << version;
  return MX_FAIL;
}
