// segment_mean_pool_normalize: L2-normalised mean of each packed segment.
// hidden: (tokens, dim) fp32 or bf16; cu_seqlens: (n + 1,) int64 offsets, cu[0] = 0,
// cu[n] = tokens, non-decreasing (checked by the Python caller). Returns (n, dim) fp32.
// An empty segment gives a zero row (as x / max(|x|, eps) does for x = 0).
#include "common.h"

#include <ATen/ops/empty.h>

#include <algorithm>

namespace adaptertx {
namespace {

constexpr float kNormEps = 1e-12f;

template <typename T>
void pool_generic(const T* h, int64_t s, int64_t e, int64_t dim, float* o) {
  for (int64_t j = 0; j < dim; ++j) o[j] = 0.0f;
  for (int64_t t = s; t < e; ++t) {
    const T* row = h + t * dim;
    for (int64_t j = 0; j < dim; ++j) o[j] += to_f(row[j]);
  }
  const float inv_n = 1.0f / static_cast<float>(std::max<int64_t>(e - s, 1));
  double sq = 0.0;
  for (int64_t j = 0; j < dim; ++j) {
    o[j] *= inv_n;
    sq += static_cast<double>(o[j]) * o[j];
  }
  const float scale = 1.0f / std::max(static_cast<float>(std::sqrt(sq)), kNormEps);
  for (int64_t j = 0; j < dim; ++j) o[j] *= scale;
}

#if ATX_HAVE_X86
template <typename T>
ATX_AVX512 void pool_avx512(const T* h, int64_t s, int64_t e, int64_t dim, float* o) {
  for (int64_t j = 0; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    // Two accumulators over alternate rows for more independent adds.
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t t = s;
    for (; t + 1 < e; t += 2) {
      a0 = _mm512_add_ps(a0, load16(h + t * dim + j, m));
      a1 = _mm512_add_ps(a1, load16(h + (t + 1) * dim + j, m));
    }
    if (t < e) a0 = _mm512_add_ps(a0, load16(h + t * dim + j, m));
    _mm512_mask_storeu_ps(o + j, m, _mm512_add_ps(a0, a1));
  }
  const __m512 inv_n = _mm512_set1_ps(1.0f / static_cast<float>(std::max<int64_t>(e - s, 1)));
  __m512 sq = _mm512_setzero_ps();
  for (int64_t j = 0; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, o + j), inv_n);
    _mm512_mask_storeu_ps(o + j, m, v);
    sq = _mm512_fmadd_ps(v, v, sq);
  }
  const __m512 scale = _mm512_set1_ps(1.0f / std::max(std::sqrt(_mm512_reduce_add_ps(sq)), kNormEps));
  for (int64_t j = 0; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    _mm512_mask_storeu_ps(o + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, o + j), scale));
  }
}
#endif

template <typename T>
void run(const at::Tensor& hidden, const int64_t* cu, int64_t n, at::Tensor& out) {
  const int64_t dim = hidden.size(1);
  const T* h = hidden.const_data_ptr<T>();
  float* o = out.mutable_data_ptr<float>();
  const bool avx = use_avx512();
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
#if ATX_HAVE_X86
      if (avx) {
        pool_avx512<T>(h, cu[i], cu[i + 1], dim, o + i * dim);
        continue;
      }
#endif
      pool_generic<T>(h, cu[i], cu[i + 1], dim, o + i * dim);
    }
  });
}

at::Tensor segment_mean_pool_normalize(const at::Tensor& hidden_in, const at::Tensor& cu_in) {
  TORCH_CHECK(hidden_in.dim() == 2, "segment_mean_pool_normalize: hidden must be (tokens, dim)");
  TORCH_CHECK(cu_in.dim() == 1 && cu_in.size(0) >= 1, "segment_mean_pool_normalize: cu_seqlens must be (n + 1,)");
  const at::Tensor hidden = hidden_in.contiguous();
  const at::Tensor cu = cu_in.to(at::kLong).contiguous();
  const int64_t n = cu.size(0) - 1;
  const int64_t* cp = cu.const_data_ptr<int64_t>();
  TORCH_CHECK(cp[0] == 0 && cp[n] == hidden.size(0), "segment_mean_pool_normalize: cu_seqlens must run from 0 to tokens");
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(cp[i] <= cp[i + 1], "segment_mean_pool_normalize: cu_seqlens must not decrease");
  at::Tensor out = at::empty({n, hidden.size(1)}, hidden.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  if (hidden.scalar_type() == at::kFloat) {
    run<float>(hidden, cp, n, out);
  } else if (hidden.scalar_type() == at::kBFloat16) {
    run<bf16>(hidden, cp, n, out);
  } else {
    TORCH_CHECK(false, "segment_mean_pool_normalize: hidden must be float32 or bfloat16");
  }
  return out;
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("segment_mean_pool_normalize", &adaptertx::segment_mean_pool_normalize); }
