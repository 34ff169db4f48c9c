// Bandwidth probe for the benchmarks: moves exactly the bytes of an optimizer step with trivial
// arithmetic, so `python -m fusedopt.bench` can print each step as "% of this machine's bandwidth,
// measured now". Buffers 0..nbuf-2 are read-modify-write streams (param and state), the last
// buffer is a read stream (grad): float32 Adam = 3 + 1 streams = 28 bytes per element.
//
//   x_k = x_k + c*r      for every written stream k   (c is a runtime value, 0 in the benchmark)
//
// Variant V: V+1 written streams (the bindings allow 1..4), the read stream is role V+1.

struct Probe {
  using Scalars = ProbeScalars;
  static constexpr int kRoles = 5, kVariants = 4;
  static constexpr bool kGrad = false;
  static int variant(const ProbeScalars& s) { return s.written - 1; }

  template <class C>
  struct Coef {
    C scale;
    explicit Coef(const ProbeScalars& s) : scale(C(s.scale)) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    const C d = c.scale * e.load(Role<V + 1>{}, i);
    e.store(Role<0>{}, i, e.load(Role<0>{}, i) + d);
    if constexpr (V >= 1) e.store(Role<1>{}, i, e.load(Role<1>{}, i) + d);
    if constexpr (V >= 2) e.store(Role<2>{}, i, e.load(Role<2>{}, i) + d);
    if constexpr (V >= 3) e.store(Role<3>{}, i, e.load(Role<3>{}, i) + d);
  }
};
