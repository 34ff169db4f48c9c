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

// Weight-decay modes shared by the algorithms that support them.
enum WeightDecay : int { kNoDecay = 0, kL2 = 1, kDecoupled = 2 };

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

// RMSprop (torch.optim.RMSprop). Buffers: param, grad, square_avg, [grad_avg], [momentum_buffer].
struct RmspropScalars {
  double lr;
  double alpha;
  double one_minus_alpha;
  double eps;
  double weight_decay;
  double momentum;
  bool has_weight_decay;
  bool centered;
  bool has_momentum;
  bool maximize;
};

// Adam / AdamW. Buffers: param, grad, exp_avg, exp_avg_sq, [max_exp_avg_sq].
struct AdamScalars {
  double neg_step_size;      // -lr/(1-beta1^t)
  double bias_correction2_sqrt; // sqrt(1-beta2^t)
  double eps;
  double beta1;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double weight_decay;       // L2 coefficient (kL2)
  double decay_factor;       // 1 - lr*weight_decay (kDecoupled)
  int weight_decay_mode;     // WeightDecay
  bool amsgrad;
  bool maximize;
};

// Adagrad (torch.optim.Adagrad). Buffers: param, grad, sum.
struct AdagradScalars {
  double neg_clr;            // -lr/(1+(t-1)*lr_decay)
  double eps;
  double weight_decay;
  bool has_weight_decay;
  bool maximize;
};

}  // namespace fusedopt
