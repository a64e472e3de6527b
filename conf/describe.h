// conf/describe.h — the effective configuration as (key, value) text pairs, in file order, for
// SHOW CONFIG. Passwords are never shown.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "conf/config.h"

namespace pgkeel::conf {

std::vector<std::pair<std::string, std::string>> describe(const Config& config);

}  // namespace pgkeel::conf
