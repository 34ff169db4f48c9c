// Adam / AdamW, one pass: reads p, g, m, v (and v_max), writes p, m, v (and v_max).
// Spec: python/fusedopt/reference.py::adam — same operations, same order, same dtype.
//
//   g  = pre(grad) (grad.inl);  g = -g if maximize
//   L2:         g = g + wd*p                 decoupled:  p = p * (1 - lr*wd)
//   m  = b1*m + (1-b1)*g
//   v  = b2*v + ((1-b2)*g)*g
//   s  = max(v_max, v) (amsgrad, stored back; NaN propagates) else v
//   p  = p + (S*m) / den
//   den = sqrt(s)/R + eps                          torch/Ng:  S = -lr/(1-b1^t), R = sqrt(1-b2^t)
//                                                  Keras/TF epsilon-hat: S = -lr*sqrt(1-b2^t)/(1-b1^t), R = 1
//   den = sqrt(s/B2 + eps_root) + eps  (EpsRoot)   optax:     S = -lr/(1-b1^t), B2 = 1-b2^t

template <class T>
struct AdamCoef {
  T neg_step_size, bc2_sqrt, eps, eps_root, bc2, beta1, omb1, beta2, omb2, weight_decay, decay_factor;
};

template <class T, bool Pre, int Wd, bool Amsgrad, bool Maximize, bool EpsRoot>
void adam_span(T* FUSEDOPT_RESTRICT p, const T* FUSEDOPT_RESTRICT g, T* FUSEDOPT_RESTRICT m,
               T* FUSEDOPT_RESTRICT v, T* FUSEDOPT_RESTRICT vmax, int64_t n, const AdamCoef<T> c,
               const GradCoef<T> gc) {
  const T S = c.neg_step_size, R = c.bc2_sqrt, eps = c.eps, er = c.eps_root, B2 = c.bc2;
  const T b1 = c.beta1, omb1 = c.omb1, b2 = c.beta2, omb2 = c.omb2;
  const T wd = c.weight_decay, decay = c.decay_factor;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = load_grad<Pre>(g[i], gc);
    if constexpr (Maximize) gi = -gi;
    T pi = p[i];
    if constexpr (Wd == kL2) gi = gi + wd * pi;
    if constexpr (Wd == kDecoupled) pi = pi * decay;
    const T mi = b1 * m[i] + omb1 * gi;
    const T vi = b2 * v[i] + (omb2 * gi) * gi;
    m[i] = mi;
    v[i] = vi;
    T si = vi;
    if constexpr (Amsgrad) {
      const T old = vmax[i];
      si = (vi > old || vi != vi) ? vi : old;
      vmax[i] = si;
    }
    T den;
    if constexpr (EpsRoot) {
      den = std::sqrt(si / B2 + er) + eps;
    } else {
      den = std::sqrt(si) / R + eps;
    }
    p[i] = pi + (S * mi) / den;
  }
}

template <class T>
void adam_step(const TensorList& list, const AdamScalars& s, const GradScalars& gs, int threads) {
  if (s.torch_exact) {
    adam_torch_exact_step<T>(list, s, gs, threads);
    return;
  }
  const GradCoef<T> gc = grad_coef<T>(gs);
  const AdamCoef<T> c{static_cast<T>(s.neg_step_size),   static_cast<T>(s.bias_correction2_sqrt),
                      static_cast<T>(s.eps),             static_cast<T>(s.eps_root),
                      static_cast<T>(s.bias_correction2), static_cast<T>(s.beta1),
                      static_cast<T>(s.one_minus_beta1), static_cast<T>(s.beta2),
                      static_cast<T>(s.one_minus_beta2), static_cast<T>(s.weight_decay),
                      static_cast<T>(s.decay_factor)};
  with_flag(gs.active, [&](auto pre) {
    with_weight_decay_mode(s.weight_decay_mode, [&](auto wd) {
      with_flag(s.amsgrad, [&](auto amsgrad) {
        with_flag(s.maximize, [&](auto maximize) {
          with_flag(s.eps_root != 0.0, [&](auto eps_root) {
            for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
              adam_span<T, decltype(pre)::value, decltype(wd)::value, decltype(amsgrad)::value,
                        decltype(maximize)::value, decltype(eps_root)::value>(
                  buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b), buffer<T>(list, k, 2, b),
                  buffer<T>(list, k, 3, b), buffer<T>(list, k, 4, b), e - b, c, gc);
            });
          });
        });
      });
    });
  });
}
