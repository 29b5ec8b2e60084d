// bottleneck_adapter: out = residual + scaling * (act(h @ down_w^T + down_b) @ up_w^T + up_b),
// the AdapterHub sequential bottleneck (seq_bn) between its pre- and post-LayerNorm steps.
// h, residual: (tokens, dim); down_w: (bottleneck, dim); up_w: (dim, bottleneck); fp32 or bf16.
// The two GEMMs stay in ATen (oneDNN / MKL); this file fuses the elementwise work around them:
// bias + activation in place on the (tokens, bottleneck) product, and bias + scaling + residual
// in place on the (tokens, dim) product (one pass each instead of three or four).
#include "common.h"

#include <ATen/ops/mm.h>

namespace adaptertx {
namespace {

#if ATX_HAVE_X86
template <typename T>
ATX_AVX512 void bias_act_rows_avx512(T* y, const float* b, int64_t r0, int64_t r1, int64_t dim, int64_t act) {
  for (int64_t r = r0; r < r1; ++r) {
    T* yr = y + r * dim;
    for (int64_t j = 0; j < dim; j += 16) {
      const __mmask16 m = tail_mask(dim - j);
      __m512 v = load16(yr + j, m);
      if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + j));
      store16(yr + j, act16(v, act), m);
    }
  }
}

template <typename T>
ATX_AVX512 void epilogue_rows_avx512(T* y, const T* res, const float* b, float s, int64_t r0, int64_t r1,
                                     int64_t dim) {
  const __m512 vs = _mm512_set1_ps(s);
  for (int64_t r = r0; r < r1; ++r) {
    T* yr = y + r * dim;
    const T* rr = res + r * dim;
    for (int64_t j = 0; j < dim; j += 16) {
      const __mmask16 m = tail_mask(dim - j);
      __m512 v = load16(yr + j, m);
      if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + j));
      store16(yr + j, _mm512_fmadd_ps(v, vs, load16(rr + j, m)), m);
    }
  }
}
#endif

// y[r, :] = act(y[r, :] + b) in place.
template <typename T>
void bias_act_inplace(T* y, const float* b, int64_t rows, int64_t dim, int64_t act) {
  const bool avx = use_avx512();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t r0, int64_t r1) {
#if ATX_HAVE_X86
    if (avx) {
      bias_act_rows_avx512<T>(y, b, r0, r1, dim, act);
      return;
    }
#endif
    for (int64_t r = r0; r < r1; ++r) {
      T* yr = y + r * dim;
      for (int64_t j = 0; j < dim; ++j) yr[j] = from_f<T>(act_f(to_f(yr[j]) + (b ? b[j] : 0.0f), act));
    }
  });
}

// y[r, :] = res[r, :] + s * (y[r, :] + b) in place.
template <typename T>
void epilogue_inplace(T* y, const T* res, const float* b, float s, int64_t rows, int64_t dim) {
  const bool avx = use_avx512();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t r0, int64_t r1) {
#if ATX_HAVE_X86
    if (avx) {
      epilogue_rows_avx512<T>(y, res, b, s, r0, r1, dim);
      return;
    }
#endif
    for (int64_t r = r0; r < r1; ++r) {
      T* yr = y + r * dim;
      const T* rr = res + r * dim;
      for (int64_t j = 0; j < dim; ++j) yr[j] = from_f<T>(to_f(rr[j]) + s * (to_f(yr[j]) + (b ? b[j] : 0.0f)));
    }
  });
}

at::Tensor bottleneck_adapter(const at::Tensor& h_in, const at::Tensor& res_in, const at::Tensor& down_w,
                              const std::optional<at::Tensor>& down_b, const at::Tensor& up_w,
                              const std::optional<at::Tensor>& up_b, int64_t activation, double scaling) {
  TORCH_CHECK(h_in.dim() == 2 && h_in.sizes() == res_in.sizes(), "bottleneck_adapter: h and residual must be (tokens, dim)");
  TORCH_CHECK(h_in.scalar_type() == res_in.scalar_type(), "bottleneck_adapter: h and residual must share a dtype");
  const auto dtype = h_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "bottleneck_adapter: h must be float32 or bfloat16");
  const at::Tensor h = h_in.contiguous();
  const at::Tensor res = res_in.contiguous();
  const at::Tensor db = param_f32(down_b);
  const at::Tensor ub = param_f32(up_b);
  at::Tensor down = at::mm(h, down_w.to(dtype).t());  // (tokens, bottleneck)
  at::Tensor up;
  const float s = static_cast<float>(scaling);
  if (dtype == at::kFloat) {
    bias_act_inplace<float>(down.mutable_data_ptr<float>(), db.defined() ? db.const_data_ptr<float>() : nullptr,
                            down.size(0), down.size(1), activation);
    up = at::mm(down, up_w.to(dtype).t()).contiguous();
    epilogue_inplace<float>(up.mutable_data_ptr<float>(), res.const_data_ptr<float>(),
                            ub.defined() ? ub.const_data_ptr<float>() : nullptr, s, up.size(0), up.size(1));
  } else {
    bias_act_inplace<bf16>(down.mutable_data_ptr<bf16>(), db.defined() ? db.const_data_ptr<float>() : nullptr,
                           down.size(0), down.size(1), activation);
    up = at::mm(down, up_w.to(dtype).t()).contiguous();
    epilogue_inplace<bf16>(up.mutable_data_ptr<bf16>(), res.const_data_ptr<bf16>(),
                           ub.defined() ? ub.const_data_ptr<float>() : nullptr, s, up.size(0), up.size(1));
  }
  return up;
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("bottleneck_adapter", &adaptertx::bottleneck_adapter); }
