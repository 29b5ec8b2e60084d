// topk_merge: fold a tile of similarity scores into each row's running top-k, in place.
// scores: (rows, cols) fp32 or bf16, finite; best_s: (rows, k) fp32, falling along each row;
// best_i: (rows, k) int64. Column j of the tile is database row offset + j. Afterwards
// best_s[r] holds the k largest of (old best_s[r], scores[r]) falling, ties kept in order
// (old entries first, then columns left to right), as a stable descending sort would.
//
// Each row keeps its k-th best score as a threshold; the tile row is compared with it 16
// values at a time and only values above it are inserted (a shifted insertion into the
// sorted list), so after the first tiles almost every value costs one vector compare.
#include "common.h"

namespace adaptertx {
namespace {

inline void insert(float* s, int64_t* ix, int64_t k, float v, int64_t id) {
  // v > s[k - 1]: drop the last, shift smaller entries down; equal entries stay ahead of v.
  int64_t p = k - 1;
  while (p > 0 && s[p - 1] < v) {
    s[p] = s[p - 1];
    ix[p] = ix[p - 1];
    --p;
  }
  s[p] = v;
  ix[p] = id;
}

template <typename T>
void row_generic(const T* row, int64_t cols, int64_t offset, float* s, int64_t* ix, int64_t k) {
  float thr = s[k - 1];
  for (int64_t j = 0; j < cols; ++j) {
    const float v = to_f(row[j]);
    if (v > thr) {
      insert(s, ix, k, v, offset + j);
      thr = s[k - 1];
    }
  }
}

#if ATX_HAVE_X86
template <typename T>
ATX_AVX512 void row_avx512(const T* row, int64_t cols, int64_t offset, float* s, int64_t* ix, int64_t k) {
  float thr = s[k - 1];
  __m512 t = _mm512_set1_ps(thr);
  for (int64_t j = 0; j < cols; j += 16) {
    const __mmask16 m = tail_mask(cols - j);
    __mmask16 hit = _mm512_mask_cmp_ps_mask(m, load16(row + j, m), t, _CMP_GT_OQ);
    while (hit) {
      const int b = __builtin_ctz(static_cast<unsigned>(hit));
      hit = static_cast<__mmask16>(hit & (hit - 1));
      const float v = to_f(row[j + b]);
      if (v > thr) {  // the threshold may have risen since the compare
        insert(s, ix, k, v, offset + j + b);
        thr = s[k - 1];
      }
    }
    t = _mm512_set1_ps(thr);
  }
}
#endif

template <typename T>
void run(const at::Tensor& scores, int64_t offset, at::Tensor& best_s, at::Tensor& best_i) {
  const int64_t rows = scores.size(0), cols = scores.size(1), k = best_s.size(1);
  const int64_t ld = scores.stride(0);
  const T* sp = scores.const_data_ptr<T>();
  float* bs = best_s.mutable_data_ptr<float>();
  int64_t* bi = best_i.mutable_data_ptr<int64_t>();
  const bool avx = use_avx512();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
#if ATX_HAVE_X86
      if (avx) {
        row_avx512<T>(sp + r * ld, cols, offset, bs + r * k, bi + r * k, k);
        continue;
      }
#endif
      row_generic<T>(sp + r * ld, cols, offset, bs + r * k, bi + r * k, k);
    }
  });
}

void topk_merge(const at::Tensor& scores, int64_t offset, at::Tensor best_s, at::Tensor best_i) {
  TORCH_CHECK(scores.dim() == 2 && scores.stride(1) == 1, "topk_merge: scores must be (rows, cols), rows contiguous");
  TORCH_CHECK(best_s.dim() == 2 && best_s.is_contiguous() && best_s.scalar_type() == at::kFloat,
              "topk_merge: best_s must be a contiguous (rows, k) float32 tensor");
  TORCH_CHECK(best_i.sizes() == best_s.sizes() && best_i.is_contiguous() && best_i.scalar_type() == at::kLong,
              "topk_merge: best_i must be a contiguous int64 tensor shaped like best_s");
  TORCH_CHECK(best_s.size(0) == scores.size(0), "topk_merge: scores and best_s must have the same rows");
  if (scores.size(0) == 0 || scores.size(1) == 0 || best_s.size(1) == 0) return;
  if (scores.scalar_type() == at::kFloat) {
    run<float>(scores, offset, best_s, best_i);
  } else if (scores.scalar_type() == at::kBFloat16) {
    run<bf16>(scores, offset, best_s, best_i);
  } else {
    TORCH_CHECK(false, "topk_merge: scores must be float32 or bfloat16");
  }
}

}  // namespace
}  // namespace adaptertx

// The schema, the fake and the reference are defined in adaptertx/kernels/_library.py; this is the CPU kernel.
TORCH_LIBRARY_IMPL(adaptertx, CPU, m) { m.impl("topk_merge", &adaptertx::topk_merge); }
