// tools/ledger/json.h — the ledger's JSON is pgkeel's strict reader and string escaping, which
// live in store/json.h since the etcd client reads etcd's answers with them.
#pragma once

#include "store/json.h"

namespace pgkeel::ledger {
namespace json = ::pgkeel::json;
}  // namespace pgkeel::ledger
