// Global max pooling with tied maxima sharing the gradient: the limit of softmax(beta x) as
// beta -> inf (docs/math.md (1c)), over each (H, W) plane of a contiguous (B, C, H, W) tensor.
// Built by dnnlab/smoothmax/native.py (torch.utils.cpp_extension) on first use.
//
// The same values, bit for bit, as the pure-torch path of dnnlab/smoothmax/kernels.py
// (_GlobalMax); tests/smoothmax/test_kernels.py checks both:
//   forward:  m = the plane's max (NaN if the plane holds a NaN, like amax),
//             count = the number of entries equal to m, an exact integer in x's dtype;
//   backward: on a plane with a max (m > -inf) each entry gets (x == m ? 1 : 0) * g / count,
//             i.e. g / count on the maxima and 0 * (g / count), a signed zero, elsewhere; a
//             plane with no max (all -inf, or a NaN) gets 0 * g everywhere, as the torch path's
//             mask (compared against NaN, it matches nothing; its count clamped to 1) gives.
// A plane is one run of H * W entries. Chunks of at least kGrain entries per thread: below that,
// waking a second thread costs more than it saves.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kGrain = 1 << 17;  // entries of x per parallel chunk

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous() && x.numel() > 0,
              "global_max: expected a non-empty contiguous (B, C, H, W) CPU tensor");
}

// SIMD lanes as GCC/Clang vector extensions (16 bytes: SSE2 on x86-64, NEON on ARM, no
// -march flag, so a build is valid on any machine of the architecture): V holds T's, M the
// comparison masks (-1 where true).
template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef float V __attribute__((vector_size(16)));
  typedef int32_t M __attribute__((vector_size(16)));
};
template <>
struct Lanes<double> {
  typedef double V __attribute__((vector_size(16)));
  typedef int64_t M __attribute__((vector_size(16)));
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// planes [begin, end) of n entries each: max into m, ties into count (if not null)
template <typename T>
void forward_planes(const T* x, T* m, T* count, int64_t begin, int64_t end, int64_t n) {
  typedef typename Lanes<T>::V V;
  typedef typename Lanes<T>::M M;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const int64_t nv = n - n % W;  // entries in whole vectors; the rest one by one
  for (int64_t r = begin; r < end; ++r) {
    const T* p = x + r * n;
    T top = p[0];
    if (nv) {
      V a = load<V>(p);
      for (int64_t j = W; j < nv; j += W) {
        const V v = load<V>(p + j);
        a = v > a ? v : a;  // compare and select (maxps), lane by lane
      }
      for (int64_t l = 0; l < W; ++l) top = a[l] > top ? a[l] : top;
    }
    for (int64_t j = nv; j < n; ++j) top = p[j] > top ? p[j] : top;
    // ties, and NaN: every finite or infinite entry is <= the max of the others, so an entry
    // that is not <= top is a NaN (or top is, when the first entry was one)
    const V t = top - V{};  // top in every lane
    M kv = {}, bv = {};
    for (int64_t j = 0; j < nv; j += W) {
      const V v = load<V>(p + j);
      kv += v == t;     // -1 per tie
      bv += ~(v <= t);  // -1 per NaN
    }
    int64_t k = 0, bad = 0;
    for (int64_t l = 0; l < W; ++l) {
      k -= kv[l];
      bad -= bv[l];
    }
    for (int64_t j = nv; j < n; ++j) {
      k += p[j] == top;
      bad += !(p[j] <= top);
    }
    if (bad) {
      top = std::numeric_limits<T>::quiet_NaN();
      k = 0;
    }
    m[r] = top;
    if (count) count[r] = static_cast<T>(k);
  }
}

template <typename T>
void backward_planes(const T* x, const T* m, const T* count, const T* g, T* gx, int64_t begin,
                     int64_t end, int64_t n) {
  typedef typename Lanes<T>::V V;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const int64_t nv = n - n % W;
  for (int64_t r = begin; r < end; ++r) {
    const T top = m[r];
    const bool live = top > -std::numeric_limits<T>::infinity();  // false for NaN too
    const T gq = live ? g[r] / count[r] : g[r];
    const T ref = live ? top : std::numeric_limits<T>::quiet_NaN();  // no max: no match
    const T z = T(0) * gq;  // (x == ref ? 1 : 0) * gq as a select (1 * gq is gq)
    const V vref = ref - V{}, vgq = gq - V{}, vz = z - V{};
    const T* p = x + r * n;
    T* q = gx + r * n;
    for (int64_t j = 0; j < nv; j += W) {
      const V out = load<V>(p + j) == vref ? vgq : vz;
      std::memcpy(q + j, &out, sizeof(V));
    }
    for (int64_t j = nv; j < n; ++j) q[j] = p[j] == ref ? gq : z;
  }
}

std::vector<at::Tensor> forward(const at::Tensor& x, bool with_count) {
  check_input(x);
  const int64_t planes = x.size(0) * x.size(1), n = x.size(2) * x.size(3);
  at::Tensor m = at::empty({x.size(0), x.size(1), 1, 1}, x.options());
  at::Tensor count = with_count ? at::empty_like(m) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "global_max_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* mp = m.data_ptr<scalar_t>();
    scalar_t* cp = with_count ? count.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / n), [&](int64_t b, int64_t e) {
      forward_planes<scalar_t>(xp, mp, cp, b, e, n);
    });
  });
  if (with_count) return {m, count};
  return {m};
}

at::Tensor backward(const at::Tensor& x, const at::Tensor& m, const at::Tensor& count,
                    const at::Tensor& g_in) {
  check_input(x);
  const int64_t planes = x.size(0) * x.size(1), n = x.size(2) * x.size(3);
  const std::vector<int64_t> out_shape{x.size(0), x.size(1), 1, 1};
  TORCH_CHECK(m.sizes() == out_shape && count.sizes() == out_shape && g_in.sizes() == out_shape,
              "global_max: max, count and incoming gradient must be (B, C, 1, 1)");
  TORCH_CHECK(m.scalar_type() == x.scalar_type() && count.scalar_type() == x.scalar_type() &&
                  g_in.scalar_type() == x.scalar_type(),
              "global_max: x, max, count and gradient must share a dtype");
  const at::Tensor g = g_in.contiguous(), mc = m.contiguous(), cc = count.contiguous();
  at::Tensor gx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "global_max_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* mp = mc.data_ptr<scalar_t>();
    const scalar_t* cp = cc.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / n), [&](int64_t b, int64_t e) {
      backward_planes<scalar_t>(xp, mp, cp, gp, gxp, b, e, n);
    });
  });
  return gx;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &forward, "max of each (H, W) plane [and its number of ties]: (B, C, 1, 1)");
  module.def("backward", &backward, "gradient of the plane max, ties sharing it: (B, C, H, W)");
}
