/*
 * masked_opt_dense_cols: one optimizer step on the block [lo, hi) x [c0, c1) of a dense (V, D)
 * weight, in place, with a dense (V, D) gradient -- the arithmetic of MXNet 1.9.1's own dense
 * kernels, bit for bit.
 *
 *   masked_opt_dense_cols(weight, grad, state...; kernel, lo, hi, c0, c1, <hyper-parameters>)
 *       -> weight (call it with out=weight: the update is in place)
 *
 * Why: a latent split (train_cols(range(c0, c1))) trains a strided column block. MXNet's
 * kernels only update contiguous arrays, so the pure path copies the block out of the weight
 * and the gradient, updates the copy and writes it back: two strided passes and a copy per
 * step. This operator updates the block where it is. The state arrays are the block-shaped
 * state of the pure path ((hi - lo, c1 - c0), contiguous) or a state made for the whole weight
 * ((V, D), updated at the block only); each state array may be either.
 *
 * kernel         MXNet operator reproduced       states (in this order)
 * sgd            sgd_update                      -
 * sgd_mom        sgd_mom_update                  mom
 * mp_sgd         mp_sgd_update                   weight32
 * mp_sgd_mom     mp_sgd_mom_update               mom (float32), weight32
 * multi_sgd      multi_sgd_update                -
 * multi_sgd_mom  multi_sgd_mom_update            mom
 * multi_mp_sgd   multi_mp_sgd_update             weight32
 * multi_mp_sgd_mom  multi_mp_sgd_mom_update      mom (float32), weight32
 * adam           adam_update                     mean, var
 * mp_adam        Optimizer.update_multi_precision around adam_update: the float16 gradient
 *                cast to float32, adam_update on the float32 master copy, the master copy
 *                cast into the float16 weight    mean (float32), var (float32), weight32
 *
 * Bits: each kernel below is written as MXNet 1.9.1 writes it (src/operator/optimizer_op-inl.h:
 * SGDKernel, SGDMomKernel, MP_SGDKernel, MP_SGDMomKernel, MultiSGDKernel, AdamUpdateKernel),
 * with the same types (float16 is the wheel's own mshadow::half::half_t, so conversions are
 * MXNet's), the same order of operations, and hyper-parameters parsed as MXNet parses them:
 * scalar fields with dmlc::stof (the wheel's dmlc/strtonum.h, which rounds differently from
 * strtof for some strings), the multi_* ops' lrs/wds tuples with std::istream. Two more things
 * are pinned because the compiler may otherwise choose them: the operand order of an addition
 * of two values that may both be NaN (x86 returns the first operand's NaN, so the order
 * decides the NaN's payload and sign; see PIN_ADD), and no FMA contraction (-ffp-contract=off
 * in setup.py; no -ffast-math). masked_opt checks the result against MXNet's own kernels in
 * every process before using it (masked_opt/inplace_check.py) and falls back if one bit
 * differs.
 *
 * Safety: every shape, dtype and range is checked against the arrays before anything is read
 * or written; arrays that overlap in memory are refused (the loops assume they do not).
 */
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

// mshadow's header-only configuration, as the CPU wheel of MXNet 1.9.1 was built: no CUDA, no
// BLAS needed here, and float16 converted in software (no F16C instructions: the wheel's
// kernels use none, checked with objdump; F16C rounds NaN payloads differently).
#define MSHADOW_USE_CUDA 0
#define MSHADOW_USE_CBLAS 0
#define MSHADOW_USE_MKL 0
#define MSHADOW_USE_F16C 0
#include "mshadow/base.h"     // mshadow::half::half_t, as MXNet 1.9.1 computes float16
#include "dmlc/strtonum.h"    // dmlc::stof, as MXNet 1.9.1 parses float parameters
#include "mxnet/lib_api.h"

#include "attrs.h"
#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#endif

using namespace mxnet::ext;
using mshadow::half::half_t;

namespace {

typedef std::unordered_map<std::string, std::string> Attrs;
using masked_opt_native::get_index;
typedef std::vector<std::vector<unsigned int> > Shapes;

const char* kOp = "masked_opt_dense_cols";

// ------------------------------------------------------------------ pinned additions
// a + b with a as the instruction's first operand: when both are NaN, x86 SSE returns a's
// (quieted). g++ would otherwise pick the order (addition commutes), and MXNet's wheel has
// its own; the self-check finds any site where the two differ.
#if defined(__x86_64__) && defined(__SSE2__)
inline float pin_add(float a, float b) {
  __asm__("addss %1, %0" : "+x"(a) : "x"(b));
  return a;
}
inline double pin_add(double a, double b) {
  __asm__("addsd %1, %0" : "+x"(a) : "x"(b));
  return a;
}
#else
inline float pin_add(float a, float b) { return a + b; }
inline double pin_add(double a, double b) { return a + b; }
#endif
// half_t's operator+ is half_t(float(a) + float(b)) (mshadow/half.h)
inline half_t pin_add(half_t a, half_t b) {
  return half_t(pin_add(static_cast<float>(a), static_cast<float>(b)));
}

// SGDMomKernel's weight_data[i] + mom_data[i], in the wheel's operand order: mom first in
// float32 and float64, weight first in float16 (found by the self-check's NaN payloads).
inline float add_weight_mom(float w, float mom) { return pin_add(mom, w); }
inline double add_weight_mom(double w, double mom) { return pin_add(mom, w); }
inline half_t add_weight_mom(half_t w, half_t mom) { return pin_add(w, mom); }

// mshadow_op::clip::Map (src/operator/mshadow_op.h)
template <typename T>
inline T clip(T x, T bound) {
  if (x > bound) {
    return bound;
  } else if (x < -bound) {
    return -bound;
  } else {
    return x;
  }
}

// mshadow_op::square_root::Map: DType(math::sqrt(a)); float16 and float32 through sqrtf. The
// x86 instruction itself (what glibc's sqrtf/sqrt run: IEEE square root, NaN in -> the same
// NaN quieted, negative -> the default NaN): a call to sqrtf here made g++ spill every register
// around it, 40% of an Adam step.
#if defined(__x86_64__) && defined(__SSE2__)
inline float sqrt_f(float a) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(a))); }
inline double sqrt_d(double a) {
  const __m128d x = _mm_set_sd(a);
  return _mm_cvtsd_f64(_mm_sqrt_sd(x, x));
}
#else
inline float sqrt_f(float a) { return ::sqrtf(a); }
inline double sqrt_d(double a) { return ::sqrt(a); }
#endif
inline float square_root(float a) { return sqrt_f(a); }
inline double square_root(double a) { return sqrt_d(a); }
inline half_t square_root(half_t a) { return half_t(sqrt_f(static_cast<float>(a))); }

// ------------------------------------------------------------------ kernels and attributes
enum Kernel {
  kSgd, kSgdMom, kMpSgd, kMpSgdMom, kMultiSgd, kMultiSgdMom, kMultiMpSgd, kMultiMpSgdMom,
  kAdam, kMpAdam, kNumKernels
};
const char* kKernelNames[kNumKernels] = {
  "sgd", "sgd_mom", "mp_sgd", "mp_sgd_mom", "multi_sgd", "multi_sgd_mom", "multi_mp_sgd",
  "multi_mp_sgd_mom", "adam", "mp_adam"};
const int kNumStates[kNumKernels] = {0, 1, 1, 2, 0, 1, 1, 2, 2, 3};

bool is_mp(int k) {
  return k == kMpSgd || k == kMpSgdMom || k == kMultiMpSgd || k == kMultiMpSgdMom ||
         k == kMpAdam;
}
bool is_multi(int k) { return k >= kMultiSgd && k <= kMultiMpSgdMom; }
bool is_sgd_mom(int k) {
  return k == kSgdMom || k == kMpSgdMom || k == kMultiSgdMom || k == kMultiMpSgdMom;
}

int find_kernel(const Attrs& attrs) {
  auto it = attrs.find("kernel");
  if (it == attrs.end()) {
    MX_ERROR_MSG << kOp << ": missing attribute 'kernel' (one of sgd, sgd_mom, mp_sgd, "
                 << "mp_sgd_mom, multi_sgd, multi_sgd_mom, multi_mp_sgd, multi_mp_sgd_mom, "
                 << "adam, mp_adam)";
    return -1;
  }
  for (int k = 0; k < kNumKernels; ++k)
    if (it->second == kKernelNames[k]) return k;
  MX_ERROR_MSG << kOp << ": unknown kernel '" << it->second << "'; expected one of sgd, "
               << "sgd_mom, mp_sgd, mp_sgd_mom, multi_sgd, multi_sgd_mom, multi_mp_sgd, "
               << "multi_mp_sgd_mom, adam, mp_adam";
  return -1;
}

// A float field of an MXNet parameter struct (dmlc FieldEntry<float>::Set): dmlc::stof, and
// every character must be used.
bool get_stof(const Attrs& attrs, const char* key, float dflt, bool required, float* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    if (required) {
      MX_ERROR_MSG << kOp << ": missing attribute '" << key << "'";
      return false;
    }
    *out = dflt;
    return true;
  }
  const std::string& value = it->second;
  size_t pos = 0;
  try {
    *out = dmlc::stof(value, &pos);
  } catch (const std::exception&) {
    pos = std::string::npos;
  }
  if (pos != value.size()) {
    MX_ERROR_MSG << kOp << ": attribute '" << key << "' must be a float, got '" << value << "'";
    return false;
  }
  return true;
}

// One element of a multi_* op's lrs/wds tuple (mxnet::Tuple<float>'s operator>>: istream).
bool get_istream(const Attrs& attrs, const char* key, float* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    MX_ERROR_MSG << kOp << ": missing attribute '" << key << "'";
    return false;
  }
  std::istringstream is(it->second);
  float v;
  if (!(is >> v) || is.peek() != std::char_traits<char>::eof()) {
    MX_ERROR_MSG << kOp << ": attribute '" << key << "' must be a float, got '" << it->second
                 << "'";
    return false;
  }
  *out = v;
  return true;
}

// Hyper-parameters as the reproduced operator's parameter struct holds them (float).
struct Hyper {
  float lr, wd, rescale_grad, clip_gradient, momentum, beta1, beta2, epsilon;
};

bool parse_hyper(const Attrs& attrs, int kernel, Hyper* h) {
  // Defaults are the parameter structs' set_default values (SGDParam, SGDMomParam,
  // MultiSGDParam, MultiSGDMomParam, AdamParam); lr (lrs) and wd (wds) of multi_* are
  // required there, as lr is in the others.
  bool ok = get_stof(attrs, "rescale_grad", 1.0f, false, &h->rescale_grad) &&
            get_stof(attrs, "clip_gradient", -1.0f, false, &h->clip_gradient);
  if (!ok) return false;
  h->momentum = 0.0f;
  h->beta1 = 0.9f;
  h->beta2 = 0.999f;
  h->epsilon = 1e-8f;
  if (is_multi(kernel)) {
    ok = get_istream(attrs, "lr", &h->lr) && get_istream(attrs, "wd", &h->wd);
  } else {
    ok = get_stof(attrs, "lr", 0.0f, true, &h->lr) &&
         get_stof(attrs, "wd", 0.0f, false, &h->wd);
  }
  if (ok && is_sgd_mom(kernel)) ok = get_stof(attrs, "momentum", 0.0f, false, &h->momentum);
  if (ok && (kernel == kAdam || kernel == kMpAdam)) {
    ok = get_stof(attrs, "beta1", 0.9f, false, &h->beta1) &&
         get_stof(attrs, "beta2", 0.999f, false, &h->beta2) &&
         get_stof(attrs, "epsilon", 1e-8f, false, &h->epsilon);
  }
  return ok;
}

struct Range {
  int64_t lo, hi, c0, c1;
};

bool parse_range(const Attrs& attrs, Range* r) {
  if (!get_index(attrs, kOp, "lo", &r->lo) || !get_index(attrs, kOp, "hi", &r->hi) ||
      !get_index(attrs, kOp, "c0", &r->c0) || !get_index(attrs, kOp, "c1", &r->c1))
    return false;
  if (r->lo >= r->hi || r->c0 >= r->c1) {
    MX_ERROR_MSG << kOp << ": need lo < hi and c0 < c1, got lo=" << r->lo << " hi=" << r->hi
                 << " c0=" << r->c0 << " c1=" << r->c1;
    return false;
  }
  return true;
}

// ------------------------------------------------------------------ the block's layout
// Row r of the block (0 <= r < rows) starts at w + r * ld in the weight and the gradient, and
// at s[i] + r * sld[i] in state i. Columns are contiguous (k of them).
template <typename DType>
struct Block {
  int64_t rows, k, ld;
  DType* w;
  const DType* g;
  void* s[3];
  int64_t sld[3];
};

// Rows ahead to prefetch: the block's rows are D elements apart, so each row of the weight and
// the gradient is a cache line of its own; the next ones are asked for while this one updates.
const int64_t kAhead = 12;

inline void prefetch_row(const void* w, const void* g) {
  __builtin_prefetch(w, 1, 0);
  __builtin_prefetch(g, 0, 0);
}

// ---- sgd_update: SGDKernel
template <typename DType>
void run_sgd(const Block<DType>& b, const Hyper& h) {
  const DType clip_g = static_cast<DType>(h.clip_gradient);
  const DType lr = static_cast<DType>(h.lr), wd = static_cast<DType>(h.wd);
  const DType rescale = static_cast<DType>(h.rescale_grad);
  const bool clipping = clip_g >= 0.0f;
  for (int64_t r = 0; r < b.rows; ++r) {
    if (r + kAhead < b.rows) prefetch_row(b.w + (r + kAhead) * b.ld, b.g + (r + kAhead) * b.ld);
    DType* __restrict w = b.w + r * b.ld;
    const DType* __restrict g = b.g + r * b.ld;
    for (int64_t j = 0; j < b.k; ++j) {
      if (clipping) {
        w[j] = (1.f - lr * wd) * w[j] - (lr) * clip(rescale * g[j], clip_g);
      } else {
        w[j] = (1.f - lr * wd) * w[j] - (lr * rescale) * g[j];
      }
    }
  }
}

// ---- sgd_mom_update: SGDMomKernel
template <typename DType>
void run_sgd_mom(const Block<DType>& b, const Hyper& h) {
  const DType clip_g = static_cast<DType>(h.clip_gradient);
  const DType momentum = static_cast<DType>(h.momentum);
  const DType lr = static_cast<DType>(h.lr), wd = static_cast<DType>(h.wd);
  const DType rescale = static_cast<DType>(h.rescale_grad);
  const bool clipping = clip_g >= 0.0f;
  DType* const mom0 = static_cast<DType*>(b.s[0]);
  for (int64_t r = 0; r < b.rows; ++r) {
    if (r + kAhead < b.rows) prefetch_row(b.w + (r + kAhead) * b.ld, b.g + (r + kAhead) * b.ld);
    DType* __restrict w = b.w + r * b.ld;
    const DType* __restrict g = b.g + r * b.ld;
    DType* __restrict mom = mom0 + r * b.sld[0];
    for (int64_t j = 0; j < b.k; ++j) {
      if (clipping) {
        mom[j] = momentum * mom[j] - lr * wd * w[j] - lr * clip(rescale * g[j], clip_g);
      } else {
        mom[j] = momentum * mom[j] - lr * wd * w[j] - lr * rescale * g[j];
      }
      w[j] = add_weight_mom(w[j], mom[j]);
    }
  }
}

// ---- mp_sgd_update: MP_SGDKernel (float32 arithmetic on the master copy)
template <typename DType>
void run_mp_sgd(const Block<DType>& b, const Hyper& h) {
  const float clip_g = h.clip_gradient, lr = h.lr, wd = h.wd, rescale = h.rescale_grad;
  const bool clipping = clip_g >= 0.0f;
  float* const w32_0 = static_cast<float*>(b.s[0]);
  for (int64_t r = 0; r < b.rows; ++r) {
    if (r + kAhead < b.rows) prefetch_row(b.w + (r + kAhead) * b.ld, b.g + (r + kAhead) * b.ld);
    DType* __restrict out = b.w + r * b.ld;
    const DType* __restrict g = b.g + r * b.ld;
    float* __restrict w32 = w32_0 + r * b.sld[0];
    for (int64_t j = 0; j < b.k; ++j) {
      float w = w32[j];
      if (clipping) {
        w = (1.f - lr * wd) * w - (lr) * clip(rescale * static_cast<float>(g[j]), clip_g);
      } else {
        w = (1.f - lr * wd) * w - (lr * rescale) * static_cast<float>(g[j]);
      }
      w32[j] = w;
      out[j] = (DType)w;
    }
  }
}

// ---- mp_sgd_mom_update: MP_SGDMomKernel
template <typename DType>
void run_mp_sgd_mom(const Block<DType>& b, const Hyper& h) {
  const float clip_g = h.clip_gradient, momentum = h.momentum, lr = h.lr, wd = h.wd;
  const float rescale = h.rescale_grad;
  const bool clipping = clip_g >= 0.0f;
  float* const mom0 = static_cast<float*>(b.s[0]);
  float* const w32_0 = static_cast<float*>(b.s[1]);
  for (int64_t r = 0; r < b.rows; ++r) {
    if (r + kAhead < b.rows) prefetch_row(b.w + (r + kAhead) * b.ld, b.g + (r + kAhead) * b.ld);
    DType* __restrict out = b.w + r * b.ld;
    const DType* __restrict g = b.g + r * b.ld;
    float* __restrict momp = mom0 + r * b.sld[0];
    float* __restrict w32 = w32_0 + r * b.sld[1];
    for (int64_t j = 0; j < b.k; ++j) {
      float w = w32[j];
      float mom = momp[j];
      if (clipping) {
        mom = momentum * mom - lr * wd * w -
              lr * clip(rescale * static_cast<float>(g[j]), clip_g);
      } else {
        mom = momentum * mom - lr * wd * w - lr * rescale * static_cast<float>(g[j]);
      }
      momp[j] = mom;
      w = pin_add(mom, w);   // as the wheel's MP_SGDMomKernel adds w + mom
      w32[j] = w;
      out[j] = w;
    }
  }
}

// ---- multi_*sgd*_update: MultiSGDKernel<MPDType, has_momentum, has_mixed_precision>, the
// lr and wd of this one weight. Without momentum, mom is MPDType(0) and momentum 0, and the
// kernel still computes momentum * mom (the bits of 0 - x differ from -x for x = 0).
template <typename DType, typename MPDType, bool has_momentum, bool has_mp>
void run_multi_sgd(const Block<DType>& b, const Hyper& h) {
  const MPDType clip_g = h.clip_gradient, rescale = h.rescale_grad;
  const MPDType momentum = has_momentum ? MPDType(h.momentum) : MPDType(0);
  const MPDType lr = h.lr, wd = h.wd;
  const bool clipping = clip_g >= 0.0f;
  MPDType* const mom0 = has_momentum ? static_cast<MPDType*>(b.s[0]) : nullptr;
  float* const w32_0 = has_mp ? static_cast<float*>(b.s[has_momentum ? 1 : 0]) : nullptr;
  const int64_t w32ld = has_mp ? b.sld[has_momentum ? 1 : 0] : 0;
  for (int64_t r = 0; r < b.rows; ++r) {
    if (r + kAhead < b.rows) prefetch_row(b.w + (r + kAhead) * b.ld, b.g + (r + kAhead) * b.ld);
    DType* __restrict out = b.w + r * b.ld;
    const DType* __restrict g = b.g + r * b.ld;
    MPDType* __restrict momp = has_momentum ? mom0 + r * b.sld[0] : nullptr;
    float* __restrict w32 = has_mp ? w32_0 + r * w32ld : nullptr;
    for (int64_t j = 0; j < b.k; ++j) {
      MPDType w = has_mp ? MPDType(w32[j]) : MPDType(out[j]);
      MPDType mom = has_momentum ? momp[j] : MPDType(0);
      if (clipping) {
        mom = momentum * mom - lr * wd * w - lr * clip(rescale * static_cast<MPDType>(g[j]),
                                                       clip_g);
      } else {
        mom = momentum * mom - lr * wd * w - lr * rescale * static_cast<MPDType>(g[j]);
      }
      if (has_momentum) momp[j] = mom;
      w = pin_add(mom, w);   // as the wheel's MultiSGDKernel adds w + mom
      if (has_mp) w32[j] = w;
      out[j] = w;
    }
  }
}

// ---- adam_update: AdamUpdateKernel, on DType weights, or (mp_adam) on the float32 master
// copy with the gradient cast to float32 and the result cast into the weight.
template <typename DType, typename CType>
void run_adam(const Block<DType>& b, const Hyper& h) {
  const CType clip_g = static_cast<CType>(h.clip_gradient);
  const CType rescale = static_cast<CType>(h.rescale_grad);
  const CType beta1 = static_cast<CType>(h.beta1), beta2 = static_cast<CType>(h.beta2);
  const CType lr = static_cast<CType>(h.lr), wd = static_cast<CType>(h.wd);
  const CType epsilon = static_cast<CType>(h.epsilon);
  const bool clipping = clip_g >= 0.f;
  const bool mp = !std::is_same<DType, CType>::value;
  CType* const mean0 = static_cast<CType*>(b.s[0]);
  CType* const var0 = static_cast<CType*>(b.s[1]);
  CType* const w32_0 = mp ? static_cast<CType*>(b.s[2]) : nullptr;
  for (int64_t r = 0; r < b.rows; ++r) {
    if (r + kAhead < b.rows) prefetch_row(b.w + (r + kAhead) * b.ld, b.g + (r + kAhead) * b.ld);
    DType* __restrict out = b.w + r * b.ld;
    const DType* __restrict g = b.g + r * b.ld;
    CType* __restrict mean = mean0 + r * b.sld[0];
    CType* __restrict var = var0 + r * b.sld[1];
    CType* __restrict w32 = mp ? w32_0 + r * b.sld[2] : nullptr;
    for (int64_t j = 0; j < b.k; ++j) {
      const CType weight = mp ? w32[j] : static_cast<CType>(out[j]);
      CType grad_rescaled = pin_add(static_cast<CType>(g[j]) * rescale, weight * wd);
      if (clipping) {
        grad_rescaled = clip(grad_rescaled, clip_g);
      }
      mean[j] = pin_add(beta1 * mean[j], (1.f - beta1) * grad_rescaled);
      var[j] = pin_add(beta2 * var[j], (1.f - beta2) * grad_rescaled * grad_rescaled);
      const CType result = weight - lr * mean[j] / pin_add(square_root(var[j]), epsilon);
      if (mp) {
        w32[j] = result;
        out[j] = DType(result);
      } else {
        out[j] = DType(result);
      }
    }
  }
}

#if defined(__x86_64__) && defined(__SSE2__)
// ---- adam_update on float32, four entries at a time. Packed SSE instructions compute each
// lane exactly as the scalar ones do (IEEE, the same NaN rules, the same MXCSR), so this gives
// run_adam<float, float>'s bits: additions pinned the same way, the clip as three selects with
// clip::Map's order (x > bound first; NaN keeps x), the row's last k % 4 entries scalar.
inline __m128 pin_add4(__m128 a, __m128 b) {
  __asm__("addps %1, %0" : "+x"(a) : "x"(b));
  return a;
}

inline __m128 clip4(__m128 x, __m128 bound, __m128 neg_bound) {
  const __m128 above = _mm_cmpgt_ps(x, bound);
  const __m128 below = _mm_cmplt_ps(x, neg_bound);
  const __m128 low = _mm_or_ps(_mm_and_ps(below, neg_bound), _mm_andnot_ps(below, x));
  return _mm_or_ps(_mm_and_ps(above, bound), _mm_andnot_ps(above, low));
}

void run_adam_f32(const Block<float>& b, const Hyper& h) {
  const float clip_g = h.clip_gradient, rescale = h.rescale_grad, beta1 = h.beta1;
  const float beta2 = h.beta2, lr = h.lr, wd = h.wd, epsilon = h.epsilon;
  const bool clipping = clip_g >= 0.f;
  const float one_b1 = 1.f - beta1, one_b2 = 1.f - beta2;
  const __m128 v_rescale = _mm_set1_ps(rescale), v_wd = _mm_set1_ps(wd);
  const __m128 v_b1 = _mm_set1_ps(beta1), v_b2 = _mm_set1_ps(beta2);
  const __m128 v_one_b1 = _mm_set1_ps(one_b1), v_one_b2 = _mm_set1_ps(one_b2);
  const __m128 v_lr = _mm_set1_ps(lr), v_eps = _mm_set1_ps(epsilon);
  const __m128 v_clip = _mm_set1_ps(clip_g), v_nclip = _mm_set1_ps(-clip_g);
  float* const mean0 = static_cast<float*>(b.s[0]);
  float* const var0 = static_cast<float*>(b.s[1]);
  const int64_t k4 = b.k & ~int64_t(3);
  for (int64_t r = 0; r < b.rows; ++r) {
    if (r + kAhead < b.rows) prefetch_row(b.w + (r + kAhead) * b.ld, b.g + (r + kAhead) * b.ld);
    float* __restrict out = b.w + r * b.ld;
    const float* __restrict g = b.g + r * b.ld;
    float* __restrict mean = mean0 + r * b.sld[0];
    float* __restrict var = var0 + r * b.sld[1];
    for (int64_t j = 0; j < k4; j += 4) {
      const __m128 weight = _mm_loadu_ps(out + j);
      __m128 gr = pin_add4(_mm_mul_ps(_mm_loadu_ps(g + j), v_rescale), _mm_mul_ps(weight, v_wd));
      if (clipping) gr = clip4(gr, v_clip, v_nclip);
      const __m128 m = pin_add4(_mm_mul_ps(v_b1, _mm_loadu_ps(mean + j)),
                                _mm_mul_ps(v_one_b1, gr));
      const __m128 v = pin_add4(_mm_mul_ps(v_b2, _mm_loadu_ps(var + j)),
                                _mm_mul_ps(_mm_mul_ps(v_one_b2, gr), gr));
      _mm_storeu_ps(mean + j, m);
      _mm_storeu_ps(var + j, v);
      const __m128 step = _mm_div_ps(_mm_mul_ps(v_lr, m), pin_add4(_mm_sqrt_ps(v), v_eps));
      _mm_storeu_ps(out + j, _mm_sub_ps(weight, step));
    }
    for (int64_t j = k4; j < b.k; ++j) {   // as run_adam<float, float>
      const float weight = out[j];
      float grad_rescaled = pin_add(g[j] * rescale, weight * wd);
      if (clipping) grad_rescaled = clip(grad_rescaled, clip_g);
      mean[j] = pin_add(beta1 * mean[j], one_b1 * grad_rescaled);
      var[j] = pin_add(beta2 * var[j], one_b2 * grad_rescaled * grad_rescaled);
      out[j] = weight - lr * mean[j] / pin_add(square_root(var[j]), epsilon);
    }
  }
}

template <>
void run_adam<float, float>(const Block<float>& b, const Hyper& h) {
  run_adam_f32(b, h);
}
#endif

template <typename DType>
void run(int kernel, const Block<DType>& b, const Hyper& h);

template <>
void run<half_t>(int kernel, const Block<half_t>& b, const Hyper& h) {
  switch (kernel) {
    case kSgd: return run_sgd(b, h);
    case kSgdMom: return run_sgd_mom(b, h);
    case kMpSgd: return run_mp_sgd(b, h);
    case kMpSgdMom: return run_mp_sgd_mom(b, h);
    case kMultiSgd: return run_multi_sgd<half_t, half_t, false, false>(b, h);
    case kMultiSgdMom: return run_multi_sgd<half_t, half_t, true, false>(b, h);
    case kMultiMpSgd: return run_multi_sgd<half_t, float, false, true>(b, h);
    case kMultiMpSgdMom: return run_multi_sgd<half_t, float, true, true>(b, h);
    case kAdam: return run_adam<half_t, half_t>(b, h);
    case kMpAdam: return run_adam<half_t, float>(b, h);
  }
}

template <typename DType>
void run(int kernel, const Block<DType>& b, const Hyper& h) {
  switch (kernel) {   // float32, float64: no multi-precision kernels (refused earlier)
    case kSgd: return run_sgd(b, h);
    case kSgdMom: return run_sgd_mom(b, h);
    case kMultiSgd: return run_multi_sgd<DType, DType, false, false>(b, h);
    case kMultiSgdMom: return run_multi_sgd<DType, DType, true, false>(b, h);
    case kAdam: return run_adam<DType, DType>(b, h);
    default: return;
  }
}

// ------------------------------------------------------------------ operator callbacks
MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  const int kernel = find_kernel(attrs);
  if (kernel < 0) return MX_FAIL;
  Range r;
  Hyper h;
  if (!parse_range(attrs, &r) || !parse_hyper(attrs, kernel, &h)) return MX_FAIL;
  *num_in = 2 + kNumStates[kernel];
  *num_out = 1;
  return MX_SUCCESS;
}

const char* state_name(int kernel, size_t i) {
  if (kernel == kAdam || kernel == kMpAdam) return i == 0 ? "mean" : (i == 1 ? "var" : "weight32");
  if (is_sgd_mom(kernel)) return i == 0 ? "mom" : "weight32";
  return "weight32";
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in, std::vector<int>* out) {
  const int kernel = find_kernel(attrs);
  if (kernel < 0) return MX_FAIL;
  const int t = in->at(0);
  if (t != kFloat16 && t != kFloat32 && t != kFloat64) {
    MX_ERROR_MSG << kOp << ": weight must be float16, float32 or float64 (dtype code " << t
                 << ")";
    return MX_FAIL;
  }
  if (is_mp(kernel) && t != kFloat16) {
    MX_ERROR_MSG << kOp << ": kernel " << kKernelNames[kernel] << " needs a float16 weight "
                 << "(dtype code " << kFloat16 << "), got dtype code " << t;
    return MX_FAIL;
  }
  if (in->at(1) != t) {
    MX_ERROR_MSG << kOp << ": grad has dtype code " << in->at(1) << ", weight has " << t
                 << " (they must match)";
    return MX_FAIL;
  }
  // States hold DType, except in the multi-precision kernels, where they are float32.
  const int st = is_mp(kernel) ? static_cast<int>(kFloat32) : t;
  for (size_t i = 2; i < in->size(); ++i) {
    if (in->at(i) != st) {
      MX_ERROR_MSG << kOp << ": state " << state_name(kernel, i - 2) << " (input " << i
                   << ") has dtype code " << in->at(i) << ", kernel " << kKernelNames[kernel]
                   << " needs dtype code " << st;
      return MX_FAIL;
    }
  }
  out->at(0) = t;
  return MX_SUCCESS;
}

MXReturnValue infer_stype(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  for (size_t i = 0; i < in->size(); ++i) {
    if (in->at(i) != kDefaultStorage) {
      MX_ERROR_MSG << kOp << ": input " << i << " must be a dense (default storage) array";
      return MX_FAIL;
    }
  }
  out->at(0) = kDefaultStorage;
  return MX_SUCCESS;
}

// Shapes of weight, grad and states against the range; with `msg` set, says what is wrong.
bool check_shapes(const Attrs& attrs, const std::vector<std::vector<int64_t> >& s) {
  Range r;
  if (!parse_range(attrs, &r)) return false;
  if (s.at(0).size() != 2) {
    MX_ERROR_MSG << kOp << ": weight must be 2-D (V, D), got " << s.at(0).size() << "-D";
    return false;
  }
  const int64_t V = s[0][0], D = s[0][1];
  if (!(r.hi <= V && r.c1 <= D)) {
    MX_ERROR_MSG << kOp << ": need 0 <= lo < hi <= V and 0 <= c0 < c1 <= D for a weight of "
                 << "shape (" << V << ", " << D << "), got lo=" << r.lo << " hi=" << r.hi
                 << " c0=" << r.c0 << " c1=" << r.c1;
    return false;
  }
  if (s.at(1) != s[0]) {
    MX_ERROR_MSG << kOp << ": grad must have the weight's shape (" << V << ", " << D << ")";
    return false;
  }
  const int64_t R = r.hi - r.lo, k = r.c1 - r.c0;
  for (size_t i = 2; i < s.size(); ++i) {
    const bool block = s[i].size() == 2 && s[i][0] == R && s[i][1] == k;
    if (!block && s[i] != s[0]) {
      MX_ERROR_MSG << kOp << ": state input " << i << " must have the block's shape (" << R
                   << ", " << k << ") or the weight's (" << V << ", " << D << ")";
      return false;
    }
  }
  return true;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  std::vector<std::vector<int64_t> > s;
  for (const auto& v : *in) s.push_back(std::vector<int64_t>(v.begin(), v.end()));
  if (!check_shapes(attrs, s)) return MX_FAIL;
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

MXReturnValue mutate_inputs(const Attrs& attrs, std::vector<int>* inputs) {
  const int kernel = find_kernel(attrs);
  if (kernel < 0) return MX_FAIL;
  for (int i = 0; i < kNumStates[kernel]; ++i) inputs->push_back(2 + i);
  return MX_SUCCESS;
}

size_t elem_size(int t) { return t == kFloat16 ? 2 : (t == kFloat32 ? 4 : 8); }

bool overlap(const MXTensor& a, const MXTensor& b) {
  const char* pa = static_cast<const char*>(a.data_ptr);
  const char* pb = static_cast<const char*>(b.data_ptr);
  const size_t na = static_cast<size_t>(a.size()) * elem_size(a.dtype);
  const size_t nb = static_cast<size_t>(b.size()) * elem_size(b.dtype);
  return na > 0 && nb > 0 && pa < pb + nb && pb < pa + na;
}

template <typename DType>
MXReturnValue forward_typed(int kernel, const Range& r, const Hyper& h,
                            std::vector<MXTensor>* inputs, MXTensor* w) {
  Block<DType> b;
  const int64_t D = w->shape[1];
  b.rows = r.hi - r.lo;
  b.k = r.c1 - r.c0;
  b.ld = D;
  b.w = w->data<DType>() + r.lo * D + r.c0;
  b.g = inputs->at(1).data<DType>() + r.lo * D + r.c0;
  for (int i = 0; i < kNumStates[kernel]; ++i) {
    MXTensor& s = inputs->at(2 + i);
    const bool block = s.shape[0] == b.rows && s.shape[1] == b.k &&
                       !(s.shape[0] == w->shape[0] && s.shape[1] == D);
    const size_t es = elem_size(s.dtype);
    char* base = static_cast<char*>(s.data_ptr);
    b.s[i] = block ? base : base + static_cast<size_t>(r.lo * D + r.c0) * es;
    b.sld[i] = block ? b.k : D;
  }
  run<DType>(kernel, b, h);
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource&) {
  const int kernel = find_kernel(attrs);
  if (kernel < 0) return MX_FAIL;
  Range r;
  Hyper h;
  if (!parse_range(attrs, &r) || !parse_hyper(attrs, kernel, &h)) return MX_FAIL;
  if (inputs->size() != static_cast<size_t>(2 + kNumStates[kernel]) || outputs->size() != 1) {
    MX_ERROR_MSG << kOp << ": kernel " << kKernelNames[kernel] << " takes "
                 << 2 + kNumStates[kernel] << " inputs and 1 output";
    return MX_FAIL;
  }
  // Shapes and dtypes again, on the arrays themselves: nothing is read or written unless
  // every array is what the loops assume.
  std::vector<std::vector<int64_t> > s;
  std::vector<int> t;
  for (const MXTensor& x : *inputs) {
    s.push_back(x.shape);
    t.push_back(x.dtype);
  }
  std::vector<int> to(1);
  if (!check_shapes(attrs, s) || infer_type(attrs, &t, &to) != MX_SUCCESS) return MX_FAIL;
  MXTensor& w = inputs->at(0);
  MXTensor& out = outputs->at(0);
  if (out.shape != w.shape || out.dtype != w.dtype) {
    MX_ERROR_MSG << kOp << ": the output must be the weight (call with out=weight)";
    return MX_FAIL;
  }
  for (size_t i = 1; i < inputs->size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (overlap(inputs->at(i), inputs->at(j))) {
        MX_ERROR_MSG << kOp << ": inputs " << j << " and " << i << " share memory; the "
                     << "weight, gradient and every state must be separate arrays";
        return MX_FAIL;
      }
    }
  }
  // out=weight is the in-place call; any other output first receives a copy of the weight.
  if (out.data_ptr != w.data_ptr) {
    for (size_t i = 1; i < inputs->size(); ++i) {
      if (overlap(out, inputs->at(i))) {
        MX_ERROR_MSG << kOp << ": the output shares memory with input " << i;
        return MX_FAIL;
      }
    }
    std::memmove(out.data_ptr, w.data_ptr, static_cast<size_t>(w.size()) * elem_size(w.dtype));
  }
  switch (w.dtype) {
    case kFloat16: return forward_typed<half_t>(kernel, r, h, inputs, &out);
    case kFloat32: return forward_typed<float>(kernel, r, h, inputs, &out);
    case kFloat64: return forward_typed<double>(kernel, r, h, inputs, &out);
    default: return MX_FAIL;   // refused by infer_type above
  }
}

}  // namespace

REGISTER_OP(masked_opt_dense_cols)
    .setForward(forward, "cpu")
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferSType(infer_stype)
    .setInferShape(infer_shape)
    .setMutateInputs(mutate_inputs);
