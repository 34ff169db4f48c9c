// Runtime ISA selection. Compiled with no ISA flags (baseline), like everything that runs at import.
#pragma once

#include <string>
#include <vector>

#include "common/kernel_table.hpp"

namespace fusedopt {

const KernelTable& active_table();                     // forced table, else the automatic choice
const KernelTable* table_for(const std::string& isa);  // nullptr if not compiled or not supported
void force_table(const KernelTable* table);            // test hook; nullptr restores the automatic choice
std::vector<std::string> compiled_isas();              // lowest first
std::vector<std::string> supported_isas();             // compiled and usable on this CPU and OS, lowest first
std::vector<std::string> disabled_isas();              // named in FUSEDOPT_DISABLE_ISA (and compiled)
const KernelTable& automatic_table();                  // best supported and not disabled (chosen once)

}  // namespace fusedopt
