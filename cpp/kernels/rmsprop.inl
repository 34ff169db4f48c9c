// RMSprop, torch.optim.RMSprop semantics (eps outside the sqrt, lr outside the momentum buffer).
// Reads p, g, v (and g_avg, b); writes the same. Spec: python/fusedopt/reference.py::rmsprop.
//
//   g = -grad if maximize else grad;   if wd: g = g + wd*p
//   v = alpha*v + ((1-alpha)*g)*g
//   centered:  g_avg = alpha*g_avg + (1-alpha)*g;  a = sqrt(v - g_avg*g_avg) + eps   (NaN if < 0, as torch)
//   else:      a = sqrt(v) + eps
//   momentum:  b = mu*b + g/a;  p = p - lr*b
//   else:      p = p - (lr*g)/a

template <class T>
struct RmspropCoef {
  T lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
};

template <class T, bool Wd, bool Centered, bool Momentum, bool Maximize>
void rmsprop_span(T* FUSEDOPT_RESTRICT p, const T* FUSEDOPT_RESTRICT g, T* FUSEDOPT_RESTRICT v,
                  T* FUSEDOPT_RESTRICT gavg, T* FUSEDOPT_RESTRICT buf, int64_t n, const RmspropCoef<T> c) {
  const T lr = c.lr, alpha = c.alpha, oma = c.one_minus_alpha, eps = c.eps;
  const T wd = c.weight_decay, mu = c.momentum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i];
    if constexpr (Maximize) gi = -gi;
    const T pi = p[i];
    if constexpr (Wd) gi = gi + wd * pi;
    const T vi = alpha * v[i] + (oma * gi) * gi;
    v[i] = vi;
    T avg;
    if constexpr (Centered) {
      const T ai = alpha * gavg[i] + oma * gi;
      gavg[i] = ai;
      avg = std::sqrt(vi - ai * ai) + eps;
    } else {
      avg = std::sqrt(vi) + eps;
    }
    if constexpr (Momentum) {
      const T bi = mu * buf[i] + gi / avg;
      buf[i] = bi;
      p[i] = pi - lr * bi;
    } else {
      p[i] = pi - (lr * gi) / avg;
    }
  }
}

template <class T>
void rmsprop_step(const TensorList& list, const RmspropScalars& s, int threads) {
  const RmspropCoef<T> c{static_cast<T>(s.lr),  static_cast<T>(s.alpha),        static_cast<T>(s.one_minus_alpha),
                         static_cast<T>(s.eps), static_cast<T>(s.weight_decay), static_cast<T>(s.momentum)};
  with_flag(s.has_weight_decay, [&](auto wd) {
    with_flag(s.centered, [&](auto centered) {
      with_flag(s.has_momentum, [&](auto momentum) {
        with_flag(s.maximize, [&](auto maximize) {
          for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
            rmsprop_span<T, decltype(wd)::value, decltype(centered)::value, decltype(momentum)::value,
                         decltype(maximize)::value>(buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b),
                                                    buffer<T>(list, k, 2, b), buffer<T>(list, k, 3, b),
                                                    buffer<T>(list, k, 4, b), e - b, c);
          });
        });
      });
    });
  });
}
