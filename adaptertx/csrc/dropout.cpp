// dropout: out[i] = keep(i) ? x[i] * scale : 0 with scale = 1 / (1 - p), where keep(i) comes
// from a counter-based hash of the element index i (row-major order) and a 64-bit seed. No
// random state and no mask: the same (p, seed) applied to the output's gradient is the
// backward pass. x: fp32 or bf16, any shape; the multiply is done in fp32 and rounded once.
//
// keep(i) = h(i) >= floor(p * 2^32) with
//   h(i) = lowbias32(lowbias32(lo32(i) ^ k1) ^ hi32(i) ^ k2),
//   k1 = lowbias32(lo32(seed)), k2 = lowbias32(hi32(seed) ^ 0x9E3779B9),
// lowbias32 being C. Wellons' 32-bit integer hash. adaptertx/kernels/dropout.py computes the
// same bits with torch integer ops (the reference this kernel is tested against).
#include "common.h"

#include <ATen/ops/empty_like.h>

namespace adaptertx {
namespace {

struct Keys {
  uint32_t k1, k2, thr;
  float scale;
};

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

inline uint32_t index_hash(uint64_t i, const Keys& k) {
  return lowbias32(lowbias32(static_cast<uint32_t>(i) ^ k.k1) ^ static_cast<uint32_t>(i >> 32) ^ k.k2);
}

// Blocks of 16 elements, aligned to 16 so that hi32(i) is constant within a block.
constexpr int64_t kBlock = 16;
constexpr int64_t kGrainBlocks = 4096;

template <typename T>
void dropout_generic(const T* x, T* out, int64_t n, const Keys& k) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t b0, int64_t b1) {
    const int64_t end = std::min(n, b1 * kBlock);
    for (int64_t i = b0 * kBlock; i < end; ++i) {
      out[i] = index_hash(static_cast<uint64_t>(i), k) >= k.thr ? from_f<T>(to_f(x[i]) * k.scale) : from_f<T>(0.0f);
    }
  });
}

#if ATX_HAVE_X86
ATX_AVX512 inline __m512i lowbias32_16(__m512i x) {
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(static_cast<int>(0x846ca68bU)));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  return x;
}

template <typename T>
ATX_AVX512 void dropout_blocks_avx512(const T* x, T* out, int64_t n, const Keys& k, int64_t b0, int64_t b1) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i k1 = _mm512_set1_epi32(static_cast<int>(k.k1));
  const __m512i thr = _mm512_set1_epi32(static_cast<int>(k.thr));
  const __m512 scale = _mm512_set1_ps(k.scale);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i = b * kBlock;
    const __mmask16 m = tail_mask(n - i);
    const uint64_t u = static_cast<uint64_t>(i);
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(u))), lanes);
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(u >> 32) ^ k.k2));
    const __m512i h = lowbias32_16(_mm512_xor_si512(lowbias32_16(_mm512_xor_si512(idx, k1)), hi));
    const __mmask16 keep = _mm512_cmpge_epu32_mask(h, thr);
    store16(out + i, _mm512_maskz_mul_ps(keep, load16(x + i, m), scale), m);
  }
}

template <typename T>
void dropout_avx512(const T* x, T* out, int64_t n, const Keys& k) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks,
                   [&](int64_t b0, int64_t b1) { dropout_blocks_avx512<T>(x, out, n, k, b0, b1); });
}
#endif

template <typename T>
void run(const at::Tensor& x, at::Tensor& out, const Keys& k) {
#if ATX_HAVE_X86
  if (use_avx512()) {
    dropout_avx512<T>(x.const_data_ptr<T>(), out.mutable_data_ptr<T>(), x.numel(), k);
    return;
  }
#endif
  dropout_generic<T>(x.const_data_ptr<T>(), out.mutable_data_ptr<T>(), x.numel(), k);
}

at::Tensor dropout(const at::Tensor& x_in, double p, int64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
  TORCH_CHECK(seed >= 0, "dropout: seed must be non-negative");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const uint64_t s = static_cast<uint64_t>(seed);
  Keys k;
  k.k1 = lowbias32(static_cast<uint32_t>(s));
  k.k2 = lowbias32(static_cast<uint32_t>(s >> 32) ^ 0x9E3779B9U);
  k.thr = static_cast<uint32_t>(std::min(std::floor(p * 4294967296.0), 4294967295.0));
  k.scale = static_cast<float>(1.0 / (1.0 - p));
  if (x.scalar_type() == at::kFloat) {
    run<float>(x, out, k);
  } else if (x.scalar_type() == at::kBFloat16) {
    run<bf16>(x, out, k);
  } else {
    TORCH_CHECK(false, "dropout: x must be float32 or bfloat16");
  }
  return out;
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("dropout", &adaptertx::dropout); }
