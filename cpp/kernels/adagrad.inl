// Adagrad, torch.optim.Adagrad semantics. Reads p, g, sum; writes p, sum.
// Spec: python/fusedopt/reference.py::adagrad.
//
//   g = pre(grad) (grad.inl);  g = -g if maximize;   if wd: g = g + wd*p
//   sum = sum + g*g
//   p = p + (C*g) / (sqrt(sum) + eps)     C = -lr/(1 + (t-1)*lr_decay)

template <class T>
struct AdagradCoef {
  T neg_clr, eps, weight_decay;
};

template <class T, bool Pre, bool Wd, bool Maximize>
void adagrad_span(T* FUSEDOPT_RESTRICT p, const T* FUSEDOPT_RESTRICT g, T* FUSEDOPT_RESTRICT sum,
                  int64_t n, const AdagradCoef<T> c, const GradCoef<T> gc) {
  const T C = c.neg_clr, eps = c.eps, wd = c.weight_decay;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = load_grad<Pre>(g[i], gc);
    if constexpr (Maximize) gi = -gi;
    const T pi = p[i];
    if constexpr (Wd) gi = gi + wd * pi;
    const T si = sum[i] + gi * gi;
    sum[i] = si;
    p[i] = pi + (C * gi) / (std::sqrt(si) + eps);
  }
}

template <class T>
void adagrad_step(const TensorList& list, const AdagradScalars& s, const GradScalars& gs, int threads) {
  const GradCoef<T> gc = grad_coef<T>(gs);
  const AdagradCoef<T> c{static_cast<T>(s.neg_clr), static_cast<T>(s.eps), static_cast<T>(s.weight_decay)};
  with_flag(gs.active, [&](auto pre) {
    with_flag(s.has_weight_decay, [&](auto wd) {
      with_flag(s.maximize, [&](auto maximize) {
        for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
          adagrad_span<T, decltype(pre)::value, decltype(wd)::value, decltype(maximize)::value>(
              buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b), buffer<T>(list, k, 2, b), e - b, c, gc);
        });
      });
    });
  });
}
