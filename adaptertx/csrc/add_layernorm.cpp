// add_layernorm: out = LayerNorm(x + residual) over the last dim (BERT's post-LN residual).
// x, residual: (tokens, dim), same dtype (fp32 or bf16); weight, bias: (dim,) or undefined.
// The sum is kept in fp32 (never rounded to bf16), mean and variance by two passes in fp32.
#include "common.h"

#include <ATen/ops/empty_like.h>

#include <vector>

namespace adaptertx {
namespace {

template <typename T>
void add_ln_row_generic(const T* x, const T* res, const float* w, const float* b, T* y, float* buf,
                        int64_t dim, float eps) {
  double sum = 0.0;
  for (int64_t j = 0; j < dim; ++j) {
    buf[j] = to_f(x[j]) + to_f(res[j]);
    sum += buf[j];
  }
  const float mean = static_cast<float>(sum / dim);
  double sq = 0.0;
  for (int64_t j = 0; j < dim; ++j) {
    const float d = buf[j] - mean;
    sq += d * d;
  }
  const float rstd = 1.0f / std::sqrt(static_cast<float>(sq / dim) + eps);
  for (int64_t j = 0; j < dim; ++j) {
    float v = (buf[j] - mean) * rstd;
    if (w) v *= w[j];
    if (b) v += b[j];
    y[j] = from_f<T>(v);
  }
}

#if ATX_HAVE_X86
template <typename T>
ATX_AVX512 void add_ln_row_avx512(const T* x, const T* res, const float* w, const float* b, T* y, float* buf,
                                  int64_t dim, float eps) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    const __m512 v = _mm512_add_ps(load16(x + j, m), load16(res + j, m));
    _mm512_mask_storeu_ps(buf + j, m, v);
    acc = _mm512_add_ps(acc, v);
  }
  const float mean = _mm512_reduce_add_ps(acc) / static_cast<float>(dim);
  const __m512 vmean = _mm512_set1_ps(mean);
  __m512 sq = _mm512_setzero_ps();
  for (int64_t j = 0; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, buf + j), vmean);
    sq = _mm512_fmadd_ps(d, d, sq);
  }
  const float rstd = 1.0f / std::sqrt(_mm512_reduce_add_ps(sq) / static_cast<float>(dim) + eps);
  const __m512 vrstd = _mm512_set1_ps(rstd);
  for (int64_t j = 0; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, buf + j), vmean), vrstd);
    if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + j));
    if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + j));
    store16(y + j, v, m);
  }
}
#endif

template <typename T>
void run(const at::Tensor& x, const at::Tensor& res, const at::Tensor& w, const at::Tensor& b, at::Tensor& out,
         float eps) {
  const int64_t rows = x.size(0), dim = x.size(1);
  const T* xp = x.const_data_ptr<T>();
  const T* rp = res.const_data_ptr<T>();
  const float* wp = w.defined() ? w.const_data_ptr<float>() : nullptr;
  const float* bp = b.defined() ? b.const_data_ptr<float>() : nullptr;
  T* yp = out.mutable_data_ptr<T>();
  const bool avx = use_avx512();
  at::parallel_for(0, rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(dim, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(static_cast<size_t>(dim));
    for (int64_t r = r0; r < r1; ++r) {
#if ATX_HAVE_X86
      if (avx) {
        add_ln_row_avx512<T>(xp + r * dim, rp + r * dim, wp, bp, yp + r * dim, buf.data(), dim, eps);
        continue;
      }
#endif
      add_ln_row_generic<T>(xp + r * dim, rp + r * dim, wp, bp, yp + r * dim, buf.data(), dim, eps);
    }
  });
}

at::Tensor add_layernorm(const at::Tensor& x_in, const at::Tensor& res_in, const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.sizes() == res_in.sizes(), "add_layernorm: x and residual must be (tokens, dim)");
  TORCH_CHECK(x_in.scalar_type() == res_in.scalar_type(), "add_layernorm: x and residual must share a dtype");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor res = res_in.contiguous();
  const at::Tensor w = param_f32(weight);
  const at::Tensor b = param_f32(bias);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  if (x.scalar_type() == at::kFloat) {
    run<float>(x, res, w, b, out, static_cast<float>(eps));
  } else if (x.scalar_type() == at::kBFloat16) {
    run<bf16>(x, res, w, b, out, static_cast<float>(eps));
  } else {
    TORCH_CHECK(false, "add_layernorm: x must be float32 or bfloat16");
  }
  return out;
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("add_layernorm", &adaptertx::add_layernorm); }
