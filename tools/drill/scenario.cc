// tools/drill/scenario.cc — reads a drill scenario (TOML). The only file of the drill that includes
// toml11, a heavy header: top-level keys set the load and the gates, each [[fault]] one fault.
//
//   duration = "30s"      clients = 8        rate = 0 (max)      write_ratio = 0.8
//   tx = false            prepared = true    sync = true
//   max_downtime = "5s"   max_lost = 0       max_errors = 100
//   [[fault]]
//   kind = "kill"         # kill, hang, switchover, failover, restart-proxy, lag, sync-loss, partition
//   at = "5s"             # since the load started
//   node = "db1"          # optional: default the current primary (lag: a standby; sync-loss: the sync one)
//   mode = "all"          # kill: postmaster (default) or all of the node's processes
//   for = "3s"            # hang, lag, partition: undone after this long
#include <toml.hpp>

#include "tools/drill/plan.h"

namespace pgkeel::drill {
namespace {

std::string where(const std::string& path, const toml::value& v, const std::string& key) {
  return path + ":" + std::to_string(v.location().line()) + ": " + key + ": ";
}

std::optional<std::int64_t> duration_of(const toml::value& v) {
  if (v.is_integer()) {
    return v.as_integer() * 1000;  // a bare number is seconds, as on the command line
  }
  if (v.is_floating()) {
    return static_cast<std::int64_t>(v.as_floating() * 1000);
  }
  if (v.is_string()) {
    return parse_duration_ms(v.as_string().str);
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::string> load_scenario(const std::string& path, Scenario& out) {
  std::vector<std::string> errors;
  toml::value doc;
  try {
    doc = toml::parse(path);
  } catch (const std::exception& e) {
    errors.push_back(path + ": " + e.what());
    return errors;
  }
  if (!doc.is_table()) {
    errors.push_back(path + ": not a TOML table");
    return errors;
  }
  for (const auto& [key, v] : doc.as_table()) {
    const std::string at = where(path, v, key);
    auto want_duration = [&](std::optional<std::int64_t>& into) {
      into = duration_of(v);
      if (!into) {
        errors.push_back(at + "want a duration such as \"5s\"");
      }
    };
    auto want_int = [&](std::optional<std::int64_t>& into) {
      if (v.is_integer() && v.as_integer() >= 0) {
        into = v.as_integer();
      } else {
        errors.push_back(at + "want a non-negative integer");
      }
    };
    auto want_bool = [&](std::optional<bool>& into) {
      if (v.is_boolean()) {
        into = v.as_boolean();
      } else {
        errors.push_back(at + "want true or false");
      }
    };
    auto want_number = [&](std::optional<double>& into) {
      if (v.is_integer()) {
        into = static_cast<double>(v.as_integer());
      } else if (v.is_floating()) {
        into = v.as_floating();
      } else {
        errors.push_back(at + "want a number");
      }
    };
    if (key == "duration") {
      want_duration(out.duration_ms);
    } else if (key == "clients") {
      std::optional<std::int64_t> n;
      want_int(n);
      if (n) {
        out.clients = static_cast<int>(*n);
      }
    } else if (key == "rate") {
      want_number(out.rate);
    } else if (key == "write_ratio") {
      want_number(out.write_ratio);
    } else if (key == "tx") {
      want_bool(out.tx);
    } else if (key == "prepared") {
      want_bool(out.prepared);
    } else if (key == "sync") {
      want_bool(out.sync);
    } else if (key == "max_downtime") {
      want_duration(out.max_downtime_ms);
    } else if (key == "max_lost") {
      want_int(out.max_lost);
    } else if (key == "max_errors") {
      want_int(out.max_errors);
    } else if (key == "fault") {
      if (!v.is_array()) {
        errors.push_back(at + "want [[fault]] tables");
        continue;
      }
      for (const auto& item : v.as_array()) {
        if (!item.is_table()) {
          errors.push_back(where(path, item, "fault") + "want a table");
          continue;
        }
        Fault f;
        bool has_kind = false;
        bool has_at = false;
        for (const auto& [fk, fv] : item.as_table()) {
          const std::string fat = where(path, fv, "fault." + fk);
          if (fk == "kind" && fv.is_string()) {
            const auto k = parse_fault_kind(fv.as_string().str);
            if (!k) {
              errors.push_back(fat + "unknown fault '" + fv.as_string().str + "'");
            } else {
              f.kind = *k;
              has_kind = true;
            }
          } else if (fk == "at" && duration_of(fv)) {
            f.at_ms = *duration_of(fv);
            has_at = true;
          } else if (fk == "for" && duration_of(fv)) {
            f.for_ms = duration_of(fv);
          } else if (fk == "node" && fv.is_string()) {
            f.node = fv.as_string().str;
          } else if (fk == "mode" && fv.is_string() &&
                     (fv.as_string().str == "all" || fv.as_string().str == "postmaster")) {
            f.all_processes = fv.as_string().str == "all";
          } else {
            errors.push_back(fat + "unknown key or bad value (kind, at, for, node, mode)");
          }
        }
        if (!has_kind || !has_at) {
          errors.push_back(where(path, item, "fault") + "every [[fault]] needs kind and at");
          continue;
        }
        out.faults.push_back(f);
      }
    } else {
      errors.push_back(at + "unknown key");
    }
  }
  return errors;
}

}  // namespace pgkeel::drill
