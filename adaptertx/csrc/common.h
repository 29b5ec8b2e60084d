// Shared helpers for the adaptertx CPU kernels: runtime ISA selection, fp32/bf16 loads and
// stores, and vectorised exp/erf/activations.
//
// Nothing here is compiled with -march flags: the AVX-512 code lives in functions marked
// with a target attribute and is only called after a runtime CPU check, so one build runs
// on any x86-64 machine (the generic path is plain C++ that the compiler vectorises).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ATX_HAVE_X86 1
#include <immintrin.h>
#define ATX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#else
#define ATX_HAVE_X86 0
#endif

namespace adaptertx {

using bf16 = c10::BFloat16;

// True when the AVX-512 path may run: the CPU has it and ADAPTERTX_KERNELS_ISA != generic.
inline bool use_avx512() {
#if ATX_HAVE_X86
  static const bool hw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("fma");
  if (!hw) return false;
  const char* isa = std::getenv("ADAPTERTX_KERNELS_ISA");
  return !(isa != nullptr && std::strcmp(isa, "generic") == 0);
#else
  return false;
#endif
}

// ---- scalar helpers (generic path) ----
inline float to_f(float v) { return v; }
inline float to_f(bf16 v) { return static_cast<float>(v); }
template <typename T>
inline T from_f(float v) { return static_cast<T>(v); }  // c10::BFloat16(float) rounds to nearest even

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7), the formula ATen's vectorised erf uses.
inline float erf_as(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (0.3275911f * ax + 1.0f);
  float r = 1.061405429f;
  r = r * t - 1.453152027f;
  r = r * t + 1.421413741f;
  r = r * t - 0.284496736f;
  r = r * t + 0.254829592f;
  const float y = 1.0f - r * t * std::exp(-x * x);
  return std::copysign(y, x);
}
inline float gelu_f(float x) { return 0.5f * x * (1.0f + erf_as(x * 0.70710678118654752f)); }

// Activation codes shared with adaptertx/kernels/bottleneck_adapter.py.
enum Act : int64_t { ACT_RELU = 0, ACT_GELU = 1, ACT_SILU = 2, ACT_LEAKYRELU = 3 };

inline float act_f(float x, int64_t act) {
  switch (act) {
    case ACT_RELU: return x > 0.0f ? x : 0.0f;
    case ACT_GELU: return gelu_f(x);
    case ACT_SILU: return x / (1.0f + std::exp(-x));
    default: return x > 0.0f ? x : 0.01f * x;
  }
}

#if ATX_HAVE_X86
// ---- AVX-512 helpers: 16 lanes, masked tails ----
ATX_AVX512 inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}
ATX_AVX512 inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
ATX_AVX512 inline __m512 load16(const bf16* p, __mmask16 m) {
  const __m256i v = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
ATX_AVX512 inline void store16(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
ATX_AVX512 inline void store16(bf16* p, __m512 v, __mmask16 m) {
  // fp32 -> bf16, round to nearest even, NaN kept quiet (as c10::BFloat16 does).
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(r));
}

// exp with Cephes' range reduction and polynomial (about 1 ulp on the clamped range).
ATX_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-103.0f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

ATX_AVX512 inline __m512 erf16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 one = _mm512_set1_ps(1.0f);
  // t = 1 / d by rcp14 and one Newton step (relative error ~1e-8, far shorter latency than div).
  const __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, one);
  const __m512 r0 = _mm512_rcp14_ps(d);
  const __m512 t = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.0f)));
  __m512 r = _mm512_set1_ps(1.061405429f);
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-1.453152027f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(1.421413741f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-0.284496736f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(0.254829592f));
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(x, x)));
  const __m512 y = _mm512_fnmadd_ps(_mm512_mul_ps(r, t), e, one);
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x80000000u));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}

ATX_AVX512 inline __m512 gelu16(__m512 x) {
  const __m512 half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  const __m512 e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)));
  return _mm512_fmadd_ps(half_x, e, half_x);
}

ATX_AVX512 inline __m512 act16(__m512 x, int64_t act) {
  switch (act) {
    case ACT_RELU: return _mm512_max_ps(x, _mm512_setzero_ps());
    case ACT_GELU: return gelu16(x);
    case ACT_SILU: {
      const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)));
      return _mm512_div_ps(x, d);
    }
    default: {
      const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
      return _mm512_mask_mul_ps(x, neg, x, _mm512_set1_ps(0.01f));
    }
  }
}
#endif  // ATX_HAVE_X86

// fp32 contiguous copy of an optional 1-D parameter (weights are small; this keeps the
// kernels to one code path whatever the parameter dtype).
inline at::Tensor param_f32(const std::optional<at::Tensor>& p) {
  if (!p.has_value() || !p->defined()) return at::Tensor();
  return p->to(at::kFloat).contiguous();
}

}  // namespace adaptertx
