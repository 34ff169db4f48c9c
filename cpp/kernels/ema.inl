// EMA of weights (Polyak averaging). Reads param, writes average. Spec: reference.py::ema.
//
//   average = decay*average + (1-decay)*param

template <class T>
void ema_span(T* FUSEDOPT_RESTRICT avg, const T* FUSEDOPT_RESTRICT p, int64_t n, const T decay, const T omd) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    avg[i] = decay * avg[i] + omd * p[i];
  }
}

template <class T>
void ema_step(const TensorList& list, const EmaScalars& s, int threads) {
  const T decay = static_cast<T>(s.decay), omd = static_cast<T>(s.one_minus_decay);
  for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
    ema_span<T>(buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b), e - b, decay, omd);
  });
}
