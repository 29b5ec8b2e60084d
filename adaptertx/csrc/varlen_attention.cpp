// varlen_attention: softmax(q k^T * scale) v for each packed sequence and head on its own,
// read straight from the fused QKV projection, no padding, no mask, no gather.
// qkv: (tokens, 3 * dim) fp32 or bf16, each row [q | k | v], head h at columns h*hd..(h+1)*hd
// of each third; cu_seqlens: (n + 1,) int64 offsets. Returns ctx: (tokens, dim) in qkv's dtype,
// head h at columns h*hd..(h+1)*hd (the layout BERT's output projection reads).
// Math in fp32: each (sequence, head) task converts its K (transposed) and V to fp32 once,
// then per query row computes the scores 16 keys at a time, an exact softmax, and the
// weighted sum of V rows; the output is rounded once.
#include "common.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace adaptertx {
namespace {

template <typename T>
void attend_generic(const T* qkv, T* out, int64_t start, int64_t len, int64_t h, int64_t hd, int64_t dim,
                    float scale, std::vector<float>& kt, std::vector<float>& vv, std::vector<float>& s) {
  const int64_t row = 3 * dim;
  kt.assign(hd * len, 0.0f);
  vv.assign(len * hd, 0.0f);
  s.assign(len, 0.0f);
  for (int64_t j = 0; j < len; ++j) {
    const T* kr = qkv + (start + j) * row + dim + h * hd;
    const T* vr = qkv + (start + j) * row + 2 * dim + h * hd;
    for (int64_t d = 0; d < hd; ++d) {
      kt[d * len + j] = to_f(kr[d]);
      vv[j * hd + d] = to_f(vr[d]);
    }
  }
  std::vector<float> acc(hd);
  for (int64_t i = 0; i < len; ++i) {
    const T* qr = qkv + (start + i) * row + h * hd;
    std::fill(s.begin(), s.end(), 0.0f);
    for (int64_t d = 0; d < hd; ++d) {
      const float qd = to_f(qr[d]) * scale;
      const float* kd = kt.data() + d * len;
      for (int64_t j = 0; j < len; ++j) s[j] += qd * kd[j];
    }
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < len; ++j) mx = std::max(mx, s[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      s[j] = std::exp(s[j] - mx);
      sum += s[j];
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float p = s[j];
      const float* vj = vv.data() + j * hd;
      for (int64_t d = 0; d < hd; ++d) acc[d] += p * vj[d];
    }
    T* o = out + (start + i) * dim + h * hd;
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < hd; ++d) o[d] = from_f<T>(acc[d] * inv);
  }
}

#if ATX_HAVE_X86
// K^T is stored with rows padded to a multiple of 16 keys (zeros; the padded scores are masked).
template <typename T>
ATX_AVX512 void attend_avx512(const T* qkv, T* out, int64_t start, int64_t len, int64_t h, int64_t hd, int64_t dim,
                              float scale, std::vector<float>& kt, std::vector<float>& vv, std::vector<float>& s) {
  const int64_t row = 3 * dim;
  const int64_t lp = (len + 15) / 16 * 16;
  const int64_t hdp = (hd + 15) / 16 * 16;
  kt.assign(hd * lp, 0.0f);
  vv.assign(len * hdp, 0.0f);
  s.assign(lp, 0.0f);
  for (int64_t j = 0; j < len; ++j) {
    const T* kr = qkv + (start + j) * row + dim + h * hd;
    const T* vr = qkv + (start + j) * row + 2 * dim + h * hd;
    for (int64_t d = 0; d < hd; ++d) kt[d * lp + j] = to_f(kr[d]);
    for (int64_t d = 0; d < hd; d += 16) store16(vv.data() + j * hdp + d, load16(vr + d, tail_mask(hd - d)), 0xFFFF);
  }
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  float q[512];
  for (int64_t i = 0; i < len; ++i) {
    const T* qr = qkv + (start + i) * row + h * hd;
    for (int64_t d = 0; d < hd; ++d) q[d] = to_f(qr[d]) * scale;
    __m512 vmax = neg_inf;
    for (int64_t j = 0; j < lp; j += 16) {
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      int64_t d = 0;
      for (; d + 2 <= hd; d += 2) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(kt.data() + d * lp + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 1]), _mm512_loadu_ps(kt.data() + (d + 1) * lp + j), a1);
      }
      if (d < hd) a0 = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(kt.data() + d * lp + j), a0);
      __m512 a = _mm512_add_ps(a0, a1);
      a = _mm512_mask_mov_ps(neg_inf, tail_mask(len - j), a);
      _mm512_storeu_ps(s.data() + j, a);
      vmax = _mm512_max_ps(vmax, a);
    }
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t j = 0; j < lp; j += 16) {
      const __mmask16 m = tail_mask(len - j);
      const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_loadu_ps(s.data() + j), mx)));
      _mm512_storeu_ps(s.data() + j, e);
      vsum = _mm512_add_ps(vsum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    T* o = out + (start + i) * dim + h * hd;
    for (int64_t d = 0; d < hd; d += 16) {
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      int64_t j = 0;
      for (; j + 2 <= len; j += 2) {
        acc0 = _mm512_fmadd_ps(_mm512_set1_ps(s[j]), _mm512_loadu_ps(vv.data() + j * hdp + d), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_set1_ps(s[j + 1]), _mm512_loadu_ps(vv.data() + (j + 1) * hdp + d), acc1);
      }
      if (j < len) acc0 = _mm512_fmadd_ps(_mm512_set1_ps(s[j]), _mm512_loadu_ps(vv.data() + j * hdp + d), acc0);
      store16(o + d, _mm512_mul_ps(_mm512_add_ps(acc0, acc1), inv), tail_mask(hd - d));
    }
  }
}
#endif

template <typename T>
void run(const at::Tensor& qkv, const int64_t* cu, int64_t n, int64_t heads, float scale, at::Tensor& out) {
  const int64_t dim = qkv.size(1) / 3, hd = dim / heads;
  const T* src = qkv.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  const bool vec = use_avx512() && hd <= 512;
  at::parallel_for(0, n * heads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> kt, vv, s;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t seq = t / heads, h = t % heads;
      const int64_t start = cu[seq], len = cu[seq + 1] - cu[seq];
      if (len == 0) continue;
#if ATX_HAVE_X86
      if (vec) {
        attend_avx512<T>(src, dst, start, len, h, hd, dim, scale, kt, vv, s);
        continue;
      }
#endif
      attend_generic<T>(src, dst, start, len, h, hd, dim, scale, kt, vv, s);
    }
  });
}

// max_seqlen is part of the schema for the CUDA kernel; the CPU kernel reads the lengths from cu_seqlens.
at::Tensor varlen_attention(const at::Tensor& qkv_in, const at::Tensor& cu_in, int64_t heads, double scale,
                            int64_t /*max_seqlen*/) {
  TORCH_CHECK(qkv_in.dim() == 2 && qkv_in.size(1) % 3 == 0, "varlen_attention: qkv must be (tokens, 3 * dim)");
  TORCH_CHECK(heads > 0 && (qkv_in.size(1) / 3) % heads == 0, "varlen_attention: dim must divide into heads");
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor cu = cu_in.to(at::kLong).contiguous();
  const int64_t n = cu.numel() - 1;
  at::Tensor out = at::empty({qkv.size(0), qkv.size(1) / 3}, qkv.options());
  if (qkv.size(0) == 0 || n <= 0) return out;
  const int64_t* c = cu.const_data_ptr<int64_t>();
  if (qkv.scalar_type() == at::kFloat) {
    run<float>(qkv, c, n, heads, static_cast<float>(scale), out);
  } else if (qkv.scalar_type() == at::kBFloat16) {
    run<bf16>(qkv, c, n, heads, static_cast<float>(scale), out);
  } else {
    TORCH_CHECK(false, "varlen_attention: qkv must be float32 or bfloat16");
  }
  return out;
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("varlen_attention", &adaptertx::varlen_attention); }
