// Gradient pre-processing shared by every algorithm (included inside fusedopt::<isa>::(anonymous)).
// Spec: python/fusedopt/reference.py::_preprocess; the formulas are in common/step_args.hpp.
//
// The kernels take it as a compile-time flag: Pre=false loads the gradient as is, Pre=true applies
// unscale -> global-norm coefficient -> clamp. The identity values (1, 1, +inf) are exact, so
// Pre=true with some of them at identity rounds exactly like applying only the others.

template <class T>
struct GradCoef {
  T scale, coef, clip;
};

template <class T>
inline GradCoef<T> grad_coef(const GradScalars& s) {
  return GradCoef<T>{static_cast<T>(s.grad_scale), static_cast<T>(s.clip_coef), static_cast<T>(s.clip_value)};
}

template <bool Pre, class T>
inline T load_grad(T g, const GradCoef<T>& c) {
  if constexpr (Pre) {
    g = g / c.scale;
    g = g * c.coef;
    // clamp to [-clip, clip]; NaN compares false: stays NaN. Both comparisons are made and the
    // result selected by bit masks: a nested `?:` on floating-point compares (which may trap) is
    // not if-converted by GCC, and the loop would stay scalar.
    g = choose(g < -c.clip, -c.clip, g);
    g = choose(g > c.clip, c.clip, g);
  }
  return g;
}
