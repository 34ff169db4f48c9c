// EMA of weights (Polyak averaging). Spec: reference.py::ema. Roles: average, param.
//
//   average = decay*average + (1-decay)*param

struct Ema {
  using Scalars = EmaScalars;
  static constexpr int kRoles = 2, kVariants = 1;
  static constexpr bool kGrad = false;
  static constexpr Role<0> average{};
  static constexpr Role<1> param{};
  static int variant(const EmaScalars&) { return 0; }

  template <class C>
  struct Coef {
    C decay, omd;
    explicit Coef(const EmaScalars& s) : decay(C(s.decay)), omd(C(s.one_minus_decay)) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    e.store(average, i, c.decay * e.load(average, i) + c.omd * e.load(param, i));
  }
};
