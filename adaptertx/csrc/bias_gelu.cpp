// bias_gelu: out = gelu(x + bias) with the exact (erf) GELU, in one pass over x.
// x: (tokens, dim) fp32 or bf16; bias: (dim,) any float dtype. Math in fp32.
#include "common.h"

#include <ATen/ops/empty_like.h>

namespace adaptertx {
namespace {

template <typename T>
void bias_gelu_generic(const T* x, const float* b, T* out, int64_t rows, int64_t dim) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * dim;
      T* yr = out + r * dim;
      for (int64_t j = 0; j < dim; ++j) yr[j] = from_f<T>(gelu_f(to_f(xr[j]) + b[j]));
    }
  });
}

#if ATX_HAVE_X86
template <typename T>
ATX_AVX512 void bias_gelu_row_avx512(const T* xr, const float* b, T* yr, int64_t dim) {
  // Four independent vectors per step so the long exp/erf dependency chains overlap.
  int64_t j = 0;
  for (; j + 64 <= dim; j += 64) {
    __m512 v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm512_add_ps(load16(xr + j + 16 * k, 0xFFFF), _mm512_loadu_ps(b + j + 16 * k));
    for (int k = 0; k < 4; ++k) v[k] = gelu16(v[k]);
    for (int k = 0; k < 4; ++k) store16(yr + j + 16 * k, v[k], 0xFFFF);
  }
  for (; j < dim; j += 16) {
    const __mmask16 m = tail_mask(dim - j);
    const __m512 v = _mm512_add_ps(load16(xr + j, m), _mm512_maskz_loadu_ps(m, b + j));
    store16(yr + j, gelu16(v), m);
  }
}

template <typename T>
void bias_gelu_avx512(const T* x, const float* b, T* out, int64_t rows, int64_t dim) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) bias_gelu_row_avx512(x + r * dim, b, out + r * dim, dim);
  });
}
#endif

template <typename T>
void run(const at::Tensor& x, const at::Tensor& b, at::Tensor& out) {
  const int64_t dim = x.size(1), rows = x.size(0);
#if ATX_HAVE_X86
  if (use_avx512()) {
    bias_gelu_avx512<T>(x.const_data_ptr<T>(), b.const_data_ptr<float>(), out.mutable_data_ptr<T>(), rows, dim);
    return;
  }
#endif
  bias_gelu_generic<T>(x.const_data_ptr<T>(), b.const_data_ptr<float>(), out.mutable_data_ptr<T>(), rows, dim);
}

at::Tensor bias_gelu(const at::Tensor& x_in, const at::Tensor& bias) {
  TORCH_CHECK(x_in.dim() == 2, "bias_gelu: x must be (tokens, dim)");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x_in.size(1), "bias_gelu: bias must be (dim,)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor b = param_f32(bias);
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  if (x.scalar_type() == at::kFloat) {
    run<float>(x, b, out);
  } else if (x.scalar_type() == at::kBFloat16) {
    run<bf16>(x, b, out);
  } else {
    TORCH_CHECK(false, "bias_gelu: x must be float32 or bfloat16");
  }
  return out;
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("bias_gelu", &adaptertx::bias_gelu); }
