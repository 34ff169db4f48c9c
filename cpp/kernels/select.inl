// choose(): the kernels' branch-free select (included inside fusedopt::<isa>::(anonymous), before
// grad.inl and engine.inl, which both use it).
//
template <class C>
struct Bits;
template <>
struct Bits<float> {
  using type = std::uint32_t;
};
template <>
struct Bits<double> {
  using type = std::uint64_t;
};

// Branch-free select for per-element runtime choices: both operands are computed, then blended
// by bit masks. (With `cond ? a : b` GCC may sink a's arithmetic into a branch that it then does
// not if-convert, since FP operations may trap, and the loop stays scalar.) Exact: bits are moved.
template <class C>
inline C choose(bool cond, C a, C b) {
  using U = typename Bits<C>::type;
  const U mask = U(0) - static_cast<U>(cond);
  return __builtin_bit_cast(C, static_cast<U>((__builtin_bit_cast(U, a) & mask) | (__builtin_bit_cast(U, b) & ~mask)));
}

