// Bandwidth probe for the benchmarks: moves exactly the bytes of an optimizer step with trivial
// arithmetic, so `python -m fusedopt.bench` can print each step as "% of this machine's bandwidth,
// measured now". Buffers 0..nbuf-2 are read-modify-write streams (param and state), the last
// buffer is a read stream (grad): float32 Adam = 3 + 1 streams = 28 bytes per element.
//
//   x_k = x_k + c*r      for every written stream k   (c is a runtime value, 0 in the benchmark)

template <class T, int RW>
void probe_span(T* FUSEDOPT_RESTRICT a0, T* FUSEDOPT_RESTRICT a1, T* FUSEDOPT_RESTRICT a2,
                T* FUSEDOPT_RESTRICT a3, const T* FUSEDOPT_RESTRICT r, int64_t n, const T c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T d = c * r[i];
    a0[i] = a0[i] + d;
    if constexpr (RW > 1) a1[i] = a1[i] + d;
    if constexpr (RW > 2) a2[i] = a2[i] + d;
    if constexpr (RW > 3) a3[i] = a3[i] + d;
  }
}

template <class T, int RW>
void probe_streams(const TensorList& list, const T c, int threads) {
  for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
    probe_span<T, RW>(buffer<T>(list, k, 0, b), RW > 1 ? buffer<T>(list, k, 1, b) : nullptr,
                      RW > 2 ? buffer<T>(list, k, 2, b) : nullptr, RW > 3 ? buffer<T>(list, k, 3, b) : nullptr,
                      buffer<T>(list, k, RW, b), e - b, c);
  });
}

template <class T>
void probe_step(const TensorList& list, const ProbeScalars& s, int threads) {
  const T c = static_cast<T>(s.scale);
  switch (list.nbuf - 1) {  // written streams (the bindings allow 1..4)
    case 1:
      probe_streams<T, 1>(list, c, threads);
      break;
    case 2:
      probe_streams<T, 2>(list, c, threads);
      break;
    case 3:
      probe_streams<T, 3>(list, c, threads);
      break;
    default:
      probe_streams<T, 4>(list, c, threads);
      break;
  }
}
