// adapter_fusion: N bottleneck adapters of one layer and their AdapterFusion in two GEMMs
// (the folded weights of adaptertx/kernels/adapter_fusion.py, pack_fusion).
// x, query, residual: (tokens, d); w_in: (2 N R + N, d); b_in: (2 N R + N,); w_out: (d, N R + N);
// res_w: (d, d) or none. The GEMMs stay in ATen (oneDNN / MKL); this file fuses the step between
// them, per token: a = act(h) for the N R bottleneck units, the N scores (keys . a + bias score),
// the softmax over the adapters at the temperature (fp32), and z = [a * p | p], in one pass
// instead of seven torch ops with their temporaries. Returns (out (tokens, d), probs (tokens, N) fp32).
#include "common.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <tuple>
#include <vector>

namespace adaptertx {
namespace {

// y: (tokens, ycols) rows [h (N R) | keys (N R) | bias scores (N)] (or h only with keys in ky);
// writes z (tokens, N R + N) in T and probs (tokens, N) fp32.
template <typename T>
void attend(const T* y, int64_t ystride, const T* ky, int64_t kstride, int64_t tokens, int64_t n, int64_t r,
            int64_t act, float inv_t, T* z, float* probs) {
  const int64_t nr = n * r;
  at::parallel_for(0, tokens, std::max<int64_t>(1, 4096 / std::max<int64_t>(nr, 1)), [&](int64_t t0, int64_t t1) {
    std::vector<float> a(nr), s(n);
    for (int64_t t = t0; t < t1; ++t) {
      const T* h = y + t * ystride;
      const T* keys = ky + t * kstride;  // keys then bias scores
      float best = -INFINITY;
      for (int64_t i = 0; i < n; ++i) {
        float acc = to_f(keys[nr + i]);
        for (int64_t j = 0; j < r; ++j) {
          // The activation is rounded to T, as the GEMM that follows reads it.
          const float v = to_f(from_f<T>(act_f(to_f(h[i * r + j]), act)));
          a[i * r + j] = v;
          acc += to_f(keys[i * r + j]) * v;
        }
        s[i] = acc * inv_t;
        best = std::max(best, s[i]);
      }
      float sum = 0.0f;
      for (int64_t i = 0; i < n; ++i) sum += (s[i] = std::exp(s[i] - best));
      float* p = probs + t * n;
      T* zt = z + t * (nr + n);
      for (int64_t i = 0; i < n; ++i) {
        p[i] = s[i] / sum;
        const float pi = to_f(from_f<T>(p[i]));
        for (int64_t j = 0; j < r; ++j) zt[i * r + j] = from_f<T>(a[i * r + j] * pi);
        zt[nr + i] = from_f<T>(pi);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> adapter_fusion(const at::Tensor& x_in, const at::Tensor& query_in,
                                                  const at::Tensor& residual, const at::Tensor& w_in,
                                                  const at::Tensor& b_in, const at::Tensor& w_out,
                                                  const std::optional<at::Tensor>& res_w, int64_t n, int64_t r,
                                                  int64_t activation, double temperature) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.sizes() == query_in.sizes() && x_in.sizes() == residual.sizes(),
              "adapter_fusion: x, query and residual must be one (tokens, d) shape");
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "adapter_fusion: x must be float32 or bfloat16");
  const int64_t nr = n * r, tokens = x_in.size(0);
  TORCH_CHECK(w_in.size(0) == 2 * nr + n && w_out.size(1) == nr + n, "adapter_fusion: weights do not match n, r");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor wi = w_in.to(dtype), bi = b_in.to(dtype), wo = w_out.to(dtype);
  at::Tensor y, ky;
  if (query_in.is_same(x_in)) {
    y = at::addmm(bi, x, wi.t());  // one GEMM: down-projections, keys and bias scores
    ky = y.narrow(1, nr, nr + n);
  } else {
    y = at::addmm(bi.narrow(0, 0, nr), x, wi.narrow(0, 0, nr).t());
    ky = at::addmm(bi.narrow(0, nr, nr + n), query_in.contiguous(), wi.narrow(0, nr, nr + n).t());
  }
  at::Tensor z = at::empty({tokens, nr + n}, x.options());
  at::Tensor probs = at::empty({tokens, n}, x.options().dtype(at::kFloat));
  const float inv_t = static_cast<float>(1.0 / temperature);
  if (dtype == at::kFloat) {
    attend<float>(y.const_data_ptr<float>(), y.stride(0), ky.const_data_ptr<float>(), ky.stride(0), tokens, n, r,
                  activation, inv_t, z.mutable_data_ptr<float>(), probs.mutable_data_ptr<float>());
  } else {
    attend<bf16>(y.const_data_ptr<bf16>(), y.stride(0), ky.const_data_ptr<bf16>(), ky.stride(0), tokens, n, r,
                 activation, inv_t, z.mutable_data_ptr<bf16>(), probs.mutable_data_ptr<float>());
  }
  const at::Tensor res = res_w.has_value() ? at::mm(residual, res_w->to(dtype).t()) : residual;
  at::Tensor out = at::addmm(res, z, wo.t());
  return {out, probs};
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("adapter_fusion", &adaptertx::adapter_fusion); }
