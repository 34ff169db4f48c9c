// Momentum as an exponential moving average (Ng, Deep Learning Specialization, course 2).
// Reads p, g, v; writes p, v. Spec: python/fusedopt/reference.py::momentum.
//
//   g = pre(grad) (grad.inl);  if wd: g = g + wd*p
//   v = beta*v + (1-beta)*g
//   p = p - step_size*v          step_size = lr, or lr/(1-beta^t) with bias correction

template <class T>
struct MomentumCoef {
  T step_size, beta, one_minus_beta, weight_decay;
};

template <class T, bool Pre, bool Wd>
void momentum_span(T* FUSEDOPT_RESTRICT p, const T* FUSEDOPT_RESTRICT g, T* FUSEDOPT_RESTRICT v,
                   int64_t n, const MomentumCoef<T> c, const GradCoef<T> gc) {
  const T step = c.step_size, beta = c.beta, omb = c.one_minus_beta, wd = c.weight_decay;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = load_grad<Pre>(g[i], gc);
    const T pi = p[i];
    if constexpr (Wd) gi = gi + wd * pi;
    const T vi = beta * v[i] + omb * gi;
    v[i] = vi;
    p[i] = pi - step * vi;
  }
}

template <class T>
void momentum_step(const TensorList& list, const MomentumScalars& s, const GradScalars& gs, int threads) {
  const GradCoef<T> gc = grad_coef<T>(gs);
  const MomentumCoef<T> c{static_cast<T>(s.step_size), static_cast<T>(s.beta),
                          static_cast<T>(s.one_minus_beta), static_cast<T>(s.weight_decay)};
  with_flag(gs.active, [&](auto pre) {
    with_flag(s.has_weight_decay, [&](auto wd) {
      for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
        momentum_span<T, decltype(pre)::value, decltype(wd)::value>(
            buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b), buffer<T>(list, k, 2, b), e - b, c, gc);
      });
    });
  });
}
