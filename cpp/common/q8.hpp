// 8-bit block-quantized optimizer states (issue 14): the format and the tables the kernels use.
//
// A state of n elements is stored as n uint8 codes and ceil(n / kQ8Block) float32 absmax values,
// one per block of kQ8Block consecutive elements (blocks counted from the tensor's first element;
// the last may be partial). Element i decodes to value[code[i]] * absmax[i / kQ8Block] (one float32
// multiplication). Encoding a block x (python/fusedopt/reference.py::q8_encode is the spec):
//   a = max |x| (NaN above inf above every finite value);
//   a NaN or inf:  absmax = NaN, every code the code of 0 (the block decodes to NaN);
//   a == 0:        absmax = 0,   every code the code of 0;
//   otherwise:     absmax = a, s = 2^64 if a < 2^-126 else 1, r = 1 / (a * s),
//                  q = (x * s) * r, code = #{c : threshold[c] <= q}  (the nearest value of the
//                  code book, a tie to the lower code).
// Code books: bitsandbytes' dynamic maps (signed for states of either sign, unsigned for states
// that are never negative), bitwise the same as bitsandbytes' and torchao's.
#pragma once

#include <cstdint>

namespace fusedopt {

constexpr std::int64_t kQ8Block = 256;

// Buckets of |q| by float32 bits: 25 binades [2^-24, 2) x 2^7 mantissa steps, per sign; |q| below
// 2^-24 falls in bucket 0 and |q| at or above 2 in the last one. Within a bucket the float32 bits of
// |q| share their top 16 bits, so at most one threshold lies inside (checked when the tables are
// built) and the low 16 bits of q decide whether q is at or above it:
//   key  = (bits(q) & 0xFFFF) ^ (q negative ? 0xFFFF : 0)      (ascending in q within the bucket)
//   code = (entry >> 24) + (key >= (entry & 0x1FFFF))
// entry >> 24: the codes below the bucket (#thresholds <= its least q); entry & 0x1FFFF: the key of
// the threshold inside, or 0x10000 (never reached) when there is none. The two clamped buckets
// hold no threshold. Same code as #{c : threshold[c] <= q}.
constexpr std::uint32_t kQ8BucketBase = 103u << 23;  // 2^-24
constexpr int kQ8BucketShift = 16;
constexpr int kQ8Buckets = 25 << 7;

struct Q8Map {
  float value[256];      // the code book, strictly ascending
  float threshold[256];  // threshold[c]: the least float32 nearer to value[c+1] than to value[c]; [255] = inf
  float bucket[2 * kQ8Buckets];  // per bucket (sign * kQ8Buckets + j): the entry above, as float32 bits
  std::uint8_t zero;     // the code of 0
};

// The unsigned or signed map's tables (built and checked on first use; call with the GIL held).
const Q8Map& q8_map(bool is_signed);

}  // namespace fusedopt
