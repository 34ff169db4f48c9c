// The values that flow from a Python call to a kernel: a list of tensors (raw pointers and sizes)
// and one plain struct of per-step scalars per algorithm.
//
// The scalars are the *derived* per-step values (e.g. -lr/(1-beta1^t)), computed once per step in
// float64 by python/fusedopt/_scalars.py and cast once to the array dtype inside the kernel. The pure
// NumPy reference (python/fusedopt/reference.py) uses the very same values, so both sides round
// identically. Structs are plain aggregates: identical in every ISA translation unit (no ODR risk).
#pragma once

#include <cstdint>

namespace fusedopt {

// A list of `count` tensors, each with `nbuf` buffers of `sizes[k]` elements of the same dtype.
// ptrs[k * nbuf + r] is buffer r of tensor k (role order is fixed per algorithm, see below).
// Buffers of one tensor never overlap each other or any other tensor's written buffers
// (checked by the bindings), which is what makes the kernels' restrict pointers valid.
struct TensorList {
  void* const* ptrs;
  const std::int64_t* sizes;
  std::int64_t count;
  int nbuf;
};

// Low-precision storage of one step call (issue 13; kernels/engine.inl, kernels/lowp.inl): the
// storage of the parameters, gradients and states (kStore*), how the parameter is written
// (kWrite*), and the stochastic-rounding key. Supported combinations (others are refused by the
// bindings): param bf16 with write rne/sr/master/split, param f16 with write rne/master, each
// with grads in the param's dtype or f32 and states f32 or the param's dtype; param f32 with f32
// grads and bf16 states (write rne). master/split: the master (float32) or trail (uint16) is
// buffer kRoles of each tensor, after the algorithm's roles.
//
// 8-bit states (issue 14, common/q8.hpp): state = kStoreQ8 with any of the parameter layouts above
// (float32 params too); each state role's buffer holds the uint8 codes, and the float32 absmax of
// state role r is buffer kRoles + 1 + (r - 2) (the master's slot kRoles is nullptr without one).
// Which code book a role uses is the algorithm's (kNonNegative in kernels/*.inl).
constexpr int kStoreF32 = 0, kStoreBf16 = 1, kStoreF16 = 2, kStoreQ8 = 3;
constexpr int kWriteRne = 0, kWriteSr = 1, kWriteMaster = 2, kWriteSplit = 3;
struct Q8Map;
struct LowpArgs {
  int param;  // kStore*
  int grad;
  int state;
  int write;  // kWrite*
  std::uint64_t seed;  // stochastic rounding: Philox key
  std::uint64_t step;  // stochastic rounding: counter words 2-3
  const Q8Map* q8_unsigned;  // kStoreQ8: the code books' tables (q8_map(false), q8_map(true))
  const Q8Map* q8_signed;
  // stochastic rounding: per array, the counter of its element 0 (the element's position in its
  // parameter; nullptr: 0 for every array). A piece of a parameter (fusedopt.distributed's
  // shards) then draws the bits the whole parameter would.
  const std::uint64_t* sr_offsets;
};

// Gradient pre-processing shared by every algorithm, applied to each gradient element as it is
// loaded, before `maximize` and weight decay (python/fusedopt/reference.py::_preprocess):
//
//   g = g / grad_scale          (AMP unscaling; the gradient buffer itself is NOT written)
//   g = g * clip_coef           (clip by global norm: min(1, max_norm/(norm + 1e-6)))
//   g = clamp(g, -clip_value, clip_value)   (clip by value; NaN stays NaN)
//
// grad_scale == 1, clip_coef == 1 and clip_value == +inf are exact identities in IEEE arithmetic,
// so a kernel may apply all three whenever any is active (`active`) and skip all three otherwise.
struct GradScalars {
  double grad_scale;
  double clip_coef;
  double clip_value;
  bool active;  // any of the three differs from its identity value
};

// Deterministic sum of squares (global gradient norm): every tensor is cut into blocks of
// kNormBlock elements (block boundaries relative to the tensor's start, so they do not depend on
// the thread count); a block is summed in float64 over kNormLanes interleaved lanes combined by a
// fixed tree; the blocks' sums are combined by a fixed pairwise tree over the global block index.
constexpr std::int64_t kNormBlock = 2048;
constexpr int kNormLanes = 8;

// SGD (torch.optim.SGD). Buffers: param, grad, momentum_buffer (only when has_momentum).
struct SgdScalars {
  double lr;
  double weight_decay;        // L2 coefficient (used when has_weight_decay)
  double momentum;            // mu
  double one_minus_dampening; // 1 - tau
  bool has_weight_decay;
  bool has_momentum;
  bool nesterov;
  bool maximize;
  bool first_step;            // momentum_buffer <- g instead of the EMA (torch's first step)
};

// Momentum as an exponential moving average (Ng). Buffers: param, grad, velocity.
struct MomentumScalars {
  double step_size;      // lr, or lr/(1-beta^t) with bias correction
  double beta;
  double one_minus_beta;
  double weight_decay;
  bool has_weight_decay;
};

// RMSprop. Buffers: param, grad, square_avg, [grad_avg], [momentum_buffer].
// a = sqrt(v + eps_inside) + eps_outside: one of the two eps is 0 (x + 0 == x exactly for x >= +0),
// so torch's form (eps outside) and TF/Keras/optax's form (eps inside) share one kernel.
// Momentum: b = mu*b + (buffer_lr*g)/a, p = p - lr*b; torch: buffer_lr = 1 (exact identity),
// TF/Keras (lr inside the buffer): buffer_lr = lr and lr = 1.
struct RmspropScalars {
  double lr;
  double buffer_lr;
  double alpha;
  double one_minus_alpha;
  double eps_outside;
  double eps_inside;
  double weight_decay;
  double momentum;
  bool has_weight_decay;
  bool centered;
  bool has_momentum;
  bool maximize;
};

// Adam / AdamW. Buffers: param, grad, exp_avg, exp_avg_sq, [max_exp_avg_sq].
// p = p*decay_factor + (neg_step_size*m) / (sqrt(s + eps_root_scaled) + eps_scaled), the bias
// corrections folded into the scalars (kernels/adam.inl lists the three conventions). The
// torch_exact path uses torch's own order: p + (torch_neg_step_size*m) / (sqrt(s)/R + torch_eps).
struct AdamScalars {
  double neg_step_size;         // -lr*sqrt(1-beta2^t)/(1-beta1^t)
  double eps_scaled;            // eps*sqrt(1-beta2^t)   (epsilon-hat: eps)
  double eps_root_scaled;       // eps_root*(1-beta2^t)  (0 unless optax's eps_root)
  double beta1;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double weight_decay;          // L2 coefficient (0 with decoupled decay)
  double decay_factor;          // 1 - lr*weight_decay with decoupled decay, else exactly 1
  double torch_neg_step_size;   // -lr/(1-beta1^t)       (torch_exact only)
  double bias_correction2_sqrt; // sqrt(1-beta2^t)       (torch_exact only)
  double torch_eps;             // eps                    (torch_exact only)
  bool amsgrad;
  bool maximize;
  bool torch_exact;             // float32 only: torch 2.13 fused Adam's rounding (kernels/torch_exact.inl)
};

// Adagrad (torch.optim.Adagrad). Buffers: param, grad, sum.
struct AdagradScalars {
  double neg_clr;            // -lr/(1+(t-1)*lr_decay)
  double eps;
  double weight_decay;
  bool has_weight_decay;
  bool maximize;
};

// Lion (Chen et al. 2023), decoupled decay. Buffers: param, grad, exp_avg.
struct LionScalars {
  double lr;
  double beta1;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double decay_factor;  // 1 - lr*weight_decay (exactly 1 without weight decay)
  bool maximize;
};

// Adamax (torch.optim.Adamax). Buffers: param, grad, exp_avg, exp_inf.
struct AdamaxScalars {
  double neg_clr;  // -lr/(1-beta1^t)
  double eps;
  double beta1;
  double one_minus_beta1;
  double beta2;
  double weight_decay;  // L2
  bool maximize;
};

// Muon (torch.optim.Muon), the element-wise halves of its step. Buffers: param, grad,
// momentum_buffer, update. Momentum phase (apply=false): momentum_buffer and update written from
// grad; apply phase (apply=true): param written from update (the Newton-Schulz output).
struct MuonScalars {
  double one_minus_momentum;  // 1 - momentum (lerp weight of the buffer update)
  double momentum;            // the Nesterov lerp weight
  double decay_factor;        // 1 - lr*weight_decay (unadjusted lr; exactly 1 without decay)
  double neg_lr;              // -adjusted lr of this call's tensors
  bool nesterov;
  bool apply;
};

// A trust-ratio step (LAMB, LARS) split in two calls, for a caller that holds only some blocks of
// a tensor (fusedopt.distributed: the per-tensor sums are exchanged between the calls). phase 0:
// both phases in one call (the default). 1: phase 1 only: the states phase 1 writes (LAMB's
// moments) are stored and the block sums of p^2 and u^2 left in scratch[2b], scratch[2b + 1] for
// every block b of the call (blocks of kNormBlock elements from each tensor's first element,
// numbered in tensor order); the parameters are not written. 2: phase 2 only, with totals[2k],
// totals[2k + 1] the sums of p^2 and u^2 over the whole of tensor k's tensor (the block sums added
// by trust.inl's pairwise tree: python/fusedopt/distributed/_shard.py, trust_total).
struct TrustSplit {
  int phase = 0;
  const double* totals = nullptr;
};

// LAMB (You et al. 2019, paper v5 Alg. 2 / optax; torch_optimizer's Lamb as a preset), per-tensor
// trust ratio. Buffers: param, grad, exp_avg, exp_avg_sq. Two phases in one call (kernels/trust.inl):
//   u = (m_scale*m)/(sqrt(v) + eps) [+ wd*p];  ratio = min(||p||, clamp)/||u|| (1 if either is 0 or adam)
//   p = p + fl(neg_lr*ratio)*u
// The norms are deterministic float64 sums (kNormBlock blocks, kNormLanes lanes, a pairwise tree per
// tensor). `scratch` (set by the bindings, not by Python): 2 doubles per block of every tensor plus
// one per tensor (bindings/step_traits.hpp, trust_scratch).
struct LambScalars {
  double neg_lr;           // -lr (torch_optimizer debias: -lr*sqrt(1-beta2^t)/(1-beta1^t))
  double m_scale;          // sqrt(1-beta2^t)/(1-beta1^t) with bias correction, else exactly 1
  double eps;              // eps*sqrt(1-beta2^t) with bias correction, else eps
  double beta1;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double weight_decay;     // decoupled, inside u (and so inside ||u||)
  double clamp_value;      // upper bound of ||p|| in the ratio (+inf: none)
  bool maximize;
  bool adam;               // ratio 1 for every tensor (torch_optimizer's adam=True)
  double* scratch;
  TrustSplit split;        // (set by the bindings: the `trust=` argument)
};

// LARS for SGD with momentum (barlowtwins/DINO form), per-tensor trust ratio. Buffers: param,
// grad, mu. Two phases in one call (kernels/trust.inl, kernels/lars.inl):
//   d = g [+ wd*p];  q = (eta*||p||)/(||d|| + eps) (1 unless adapt and both norms > 0)
//   mu = momentum*mu + q*d;  p = p + neg_lr*mu
// `scratch` as LambScalars'.
struct LarsScalars {
  double neg_lr;        // -lr
  double momentum;
  double weight_decay;  // added to the gradient, inside ||d||
  double eta;           // trust coefficient
  double eps;           // added to ||d|| (optax's; 0 in barlowtwins)
  bool maximize;
  bool adapt;           // the trust ratio (false: q = 1, SGD with momentum and weight decay)
  double* scratch;
  TrustSplit split;     // (set by the bindings: the `trust=` argument)
};

// RAdam (torch.optim.RAdam). Buffers: param, grad, exp_avg, exp_avg_sq. Derived per step in
// float64 (python/fusedopt/_scalars.py::radam_scalars); `rectified` is rho_t > 5 (strict).
struct RadamScalars {
  double bias_correction1;       // 1 - beta1^t
  double lr;
  double eps;
  double bias_correction2_sqrt;  // (1 - beta2^t) ** 0.5
  double rect;                   // the variance rectification term (0 when not rectified)
  double beta1;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double weight_decay;  // L2 (0 when decoupled)
  double decay_factor;  // 1 - lr*wd when decoupled, exactly 1 otherwise
  bool rectified;
  bool maximize;
};

// NAdam (torch.optim.NAdam, loop form). Buffers: param, grad, exp_avg, exp_avg_sq. Derived per step
// in float64 (python/fusedopt/_scalars.py::nadam_scalars) from the parameter's mu_product.
struct NadamScalars {
  double grad_coef;         // -lr*(1-mu_t)/(1-mu_product)
  double momentum_coef;     // -lr*mu_{t+1}/(1-mu_product*mu_{t+1})
  double bias_correction2;  // 1 - beta2^t
  double eps;
  double beta1;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double weight_decay;  // L2 (0 when decoupled)
  double decay_factor;  // 1 - lr*wd when decoupled, exactly 1 otherwise
  bool maximize;
};

// EMA of weights: average = decay*average + (1-decay)*param. Buffers: average, param.
struct EmaScalars {
  double decay;
  double one_minus_decay;
};

// The bandwidth probe of the benchmarks (kernels/probe.inl): x += scale*r on each written stream.
struct ProbeScalars {
  double scale;
  int written;  // written streams, 1..4 (the last buffer is the read stream)
};

// Adafactor (torch.optim.Adafactor, torch 2.13, its loop form). Not a TensorList step: a tensor of
// >= 2 dims has factored states of other shapes (row_var [..., R, 1], col_var [..., 1, C]), one of
// <= 1 dim a same-shape `variance`. The bindings (bindings/adafactor.cpp) lay out each tensor
// (AdafactorTensor) and the float64 scratch; the kernel (kernels/adafactor.inl) runs its phases
// in one call. Scalars derived in float64 by python/fusedopt/_scalars.py::adafactor_scalars.
struct AdafactorScalars {
  double w;        // t**beta2_decay, the lerp weight of the factors / variance
  double rho;      // min(lr, 1/t**0.5)
  double eps1;     // None -> finfo(dtype of the group's first param).eps (resolved in Python)
  double eps1_sq;  // eps1*eps1 (float64, cast once)
  double eps2;
  double d;        // clipping threshold
  double decay;    // 1 - lr*weight_decay
  bool has_wd;     // weight_decay != 0
  bool maximize;
};

// Fixed blocking of an Adafactor step (never derived from the thread count): a tensor is cut into
// segments of at most kAdafactorSeg contiguous elements (a factored tensor: row r of batch b,
// column chunk q); float64 sums over a segment use kNormLanes lanes. A work item is a tile of
// rows x one column chunk (factored: tile_rows rows of one batch; <= kAdafactorTile elements) or
// kAdafactorTile / kAdafactorSeg segments (unfactored).
constexpr std::int64_t kAdafactorSeg = 1024;
constexpr std::int64_t kAdafactorTile = 65536;

struct AdafactorTensor {
  void* param;
  const void* grad;
  void* row;          // row_var (factored) or variance
  void* col;          // col_var (factored) or nullptr
  std::int64_t size;  // elements of param
  std::int64_t batch, rows, cols;  // factored: the shape as [batch, rows, cols]
  bool factored;
  std::int64_t tile_rows, row_tiles, chunks;  // factored: rows per tile, tiles per batch, column chunks
  std::int64_t items;                         // work items (0: empty tensor, untouched)
  std::int64_t seg;      // scratch offset of its segment slots (2 doubles per segment)
  std::int64_t colpart;  // scratch offset of the column partial sums (batch*row_tiles*cols doubles)
  std::int64_t mean;     // scratch offset of max(mean(row_var), eps1) per batch
  std::int64_t scal;     // scratch offset of its 2 scalars: alpha, fl(-alpha/den)
};

struct AdafactorList {
  const AdafactorTensor* t;
  std::int64_t count;
  std::int64_t items;  // sum of t[k].items
  double* scratch;
};

}  // namespace fusedopt
