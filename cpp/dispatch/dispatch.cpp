// Chooses the kernel table once, at first use (a function-local static: thread-safe since C++11).
// Compiled with no ISA flags; it only reads the per-ISA tables' addresses, never runs their code.
#include "dispatch/dispatch.hpp"

#include <atomic>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "dispatch/cpu_features.hpp"

namespace fusedopt {

// The per-ISA tables (cpp/kernels/kernels_*.cpp).
#if defined(__x86_64__) || defined(_M_X64)
namespace sse2 { extern const KernelTable kernel_table; }
#if defined(FUSEDOPT_COMPILED_AVX2)
namespace avx2 { extern const KernelTable kernel_table; }
#endif
#if defined(FUSEDOPT_COMPILED_AVX512)
namespace avx512 { extern const KernelTable kernel_table; }
#endif
#elif defined(__aarch64__) || defined(_M_ARM64)
namespace neon { extern const KernelTable kernel_table; }
#else
namespace generic { extern const KernelTable kernel_table; }
#endif

namespace {

struct Entry {
  const KernelTable* table;
  bool supported;
};

// Every compiled table, lowest first, with whether this CPU/OS can run it.
std::vector<Entry> entries() {
  const CpuFeatures cpu = detect_cpu_features();
  (void)cpu;
  std::vector<Entry> out;
#if defined(__x86_64__) || defined(_M_X64)
  out.push_back({&sse2::kernel_table, true});
#if defined(FUSEDOPT_COMPILED_AVX2)
  out.push_back({&avx2::kernel_table, cpu.avx2_fma});
#endif
#if defined(FUSEDOPT_COMPILED_AVX512)
  out.push_back({&avx512::kernel_table, cpu.avx512});
#endif
#elif defined(__aarch64__) || defined(_M_ARM64)
  out.push_back({&neon::kernel_table, true});
#else
  out.push_back({&generic::kernel_table, true});
#endif
  return out;
}

const std::vector<Entry>& all_entries() {
  static const std::vector<Entry> e = entries();
  return e;
}

std::vector<std::string> split_names(const char* text) {
  std::vector<std::string> names;
  if (text == nullptr) return names;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::string name;
    for (char ch : item) {
      if (ch == ' ' || ch == '\t') continue;
      name.push_back(static_cast<char>((ch >= 'A' && ch <= 'Z') ? ch - 'A' + 'a' : ch));
    }
    if (!name.empty()) names.push_back(name);
  }
  return names;
}

bool is_known_isa(const std::string& name) {
  for (const char* known : {"sse2", "avx2", "avx512", "neon", "generic"}) {
    if (name == known) return true;
  }
  return false;
}

// FUSEDOPT_DISABLE_ISA="avx512,avx2": unknown names are an error (raised at first use, i.e. as an
// ImportError-free RuntimeError from the first call); names of targets not compiled here are ignored
// (the Python layer warns about them); the baseline target cannot be disabled.
std::vector<std::string> read_disabled() {
  std::vector<std::string> out;
  for (const std::string& name : split_names(std::getenv("FUSEDOPT_DISABLE_ISA"))) {
    if (!is_known_isa(name)) {
      throw std::invalid_argument("FUSEDOPT_DISABLE_ISA: unknown ISA name '" + name +
                                  "' (known: sse2, avx2, avx512, neon, generic)");
    }
    out.push_back(name);
  }
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  for (const std::string& x : v) {
    if (x == s) return true;
  }
  return false;
}

const KernelTable& choose() {
  const std::vector<std::string> disabled = read_disabled();
  const std::vector<Entry>& e = all_entries();
  const KernelTable* best = e.front().table;  // the baseline is always usable and never disabled
  for (const Entry& x : e) {
    if (x.supported && !contains(disabled, x.table->isa)) best = x.table;
  }
  return *best;
}

std::atomic<const KernelTable*> g_forced{nullptr};

}  // namespace

const KernelTable& automatic_table() {
  static const KernelTable& chosen = choose();
  return chosen;
}

const KernelTable& active_table() {
  const KernelTable* forced = g_forced.load(std::memory_order_acquire);
  return forced != nullptr ? *forced : automatic_table();
}

void force_table(const KernelTable* table) { g_forced.store(table, std::memory_order_release); }

const KernelTable* table_for(const std::string& isa) {
  for (const Entry& x : all_entries()) {
    if (x.supported && isa == x.table->isa) return x.table;
  }
  return nullptr;
}

std::vector<std::string> compiled_isas() {
  std::vector<std::string> out;
  for (const Entry& x : all_entries()) out.emplace_back(x.table->isa);
  return out;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const Entry& x : all_entries()) {
    if (x.supported) out.emplace_back(x.table->isa);
  }
  return out;
}

std::vector<std::string> disabled_isas() {
  std::vector<std::string> out;
  const std::vector<std::string> disabled = read_disabled();
  for (const Entry& x : all_entries()) {
    if (contains(disabled, x.table->isa) && x.table != all_entries().front().table) out.emplace_back(x.table->isa);
  }
  return out;
}

}  // namespace fusedopt
