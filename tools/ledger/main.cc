// tools/ledger/main.cc — the pgkeel-ledger command: setup, run (the writer, with a live line per
// second and a run file) and verify (a run file against a server). Exit codes: 0 fine, 1 the
// verdict found lost, duplicated, failed-yet-present or unexpected rows, 2 usage or I/O error.
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tools/ledger/ledger.h"

namespace {

using namespace pgkeel::ledger;

constexpr const char* kUsage =
    "usage:\n"
    "  pgkeel-ledger setup  --conninfo C [--truncate]\n"
    "  pgkeel-ledger run    --conninfo C --clients N (--duration S | --count N) [--rate R]\n"
    "                       [--tx] [--statement-timeout S] [--split-gap-ms MS] --out FILE.json\n"
    "  pgkeel-ledger verify --conninfo C --in FILE.json [--at MS | --at-unix-ms MS]\n"
    "\n"
    "run: N clients, each on its own connection, insert uniquely numbered rows (autocommit, or\n"
    "BEGIN; INSERT; COMMIT with --tx) for S seconds or N attempts in all, at R attempts/s over\n"
    "all clients or as fast as they go; every attempt ends acknowledged, failed or unknown.\n"
    "A statement unanswered for S seconds (default 10, 0: no limit) is abandoned.\n"
    "verify: reads the run's ids from the server; exits 1 if an acknowledged row is lost or\n"
    "duplicated, a definitely failed row is present, or an id was never attempted. --at prints\n"
    "the acknowledged writes around a moment (ms since the run started, or wall clock ms).\n";

volatile std::sig_atomic_t g_signalled = 0;
extern "C" void on_signal(int /*sig*/) { g_signalled = 1; }

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "pgkeel-ledger: %s\n%s", message.c_str(), kUsage);
  std::exit(2);
}

struct Args {
  std::string command;
  std::string conninfo;
  bool truncate = false;
  int clients = 0;
  std::optional<double> duration_s;
  std::optional<std::int64_t> count;
  double rate = 0;
  bool tx = false;
  std::int64_t split_gap_ms = 10;
  double statement_timeout_s = 10;
  std::string out;
  std::string in;
  std::optional<std::int64_t> at_ms;
  std::optional<std::int64_t> at_unix_ms;
};

template <typename T>
T number(std::string_view flag, const std::string& text) {
  T v{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    usage_error(std::string(flag) + " wants a number, got '" + text + "'");
  }
  return v;
}

Args parse_args(int argc, char** argv) {
  if (argc < 2) {
    usage_error("no command");
  }
  Args a;
  a.command = argv[1];
  if (a.command == "-h" || a.command == "--help" || a.command == "help") {
    std::fputs(kUsage, stdout);
    std::exit(0);
  }
  if (a.command != "setup" && a.command != "run" && a.command != "verify") {
    usage_error("unknown command '" + a.command + "'");
  }
  for (int i = 2; i < argc; ++i) {
    const std::string_view flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage_error(std::string(flag) + " needs a value");
      }
      return argv[++i];
    };
    if (flag == "--conninfo") {
      a.conninfo = value();
    } else if (flag == "--truncate" && a.command == "setup") {
      a.truncate = true;
    } else if (flag == "--clients" && a.command == "run") {
      a.clients = number<int>(flag, value());
    } else if (flag == "--duration" && a.command == "run") {
      a.duration_s = number<double>(flag, value());
    } else if (flag == "--count" && a.command == "run") {
      a.count = number<std::int64_t>(flag, value());
    } else if (flag == "--rate" && a.command == "run") {
      a.rate = number<double>(flag, value());
    } else if (flag == "--tx" && a.command == "run") {
      a.tx = true;
    } else if (flag == "--statement-timeout" && a.command == "run") {
      a.statement_timeout_s = number<double>(flag, value());
    } else if (flag == "--split-gap-ms" && a.command == "run") {
      a.split_gap_ms = number<std::int64_t>(flag, value());
    } else if (flag == "--out" && a.command == "run") {
      a.out = value();
    } else if (flag == "--in" && a.command == "verify") {
      a.in = value();
    } else if (flag == "--at" && a.command == "verify") {
      a.at_ms = number<std::int64_t>(flag, value());
    } else if (flag == "--at-unix-ms" && a.command == "verify") {
      a.at_unix_ms = number<std::int64_t>(flag, value());
    } else {
      usage_error("unknown option '" + std::string(flag) + "' for " + a.command);
    }
  }
  if (a.conninfo.empty()) {
    usage_error("--conninfo is required");
  }
  if (a.command == "run") {
    if (a.clients < 1 || a.clients > kMaxClients) {
      usage_error("--clients must be 1.." + std::to_string(kMaxClients));
    }
    if (a.duration_s.has_value() == a.count.has_value()) {
      usage_error("run wants exactly one of --duration and --count");
    }
    if ((a.duration_s && *a.duration_s <= 0) || (a.count && *a.count < 1) || a.rate < 0 ||
        a.split_gap_ms < 0 || a.statement_timeout_s < 0) {
      usage_error("--duration and --count must be positive, other numbers not negative");
    }
    if (a.out.empty()) {
      usage_error("run needs --out FILE.json");
    }
  }
  if (a.command == "verify" && a.in.empty()) {
    usage_error("verify needs --in FILE.json");
  }
  return a;
}

std::string ms(std::int64_t v) { return std::to_string(v) + " ms"; }

// Counts, errors and write gaps: printed at the end of a run and by verify.
void print_run_summary(const RunReport& r) {
  const Counts c = count_outcomes(r.timeline);
  std::fprintf(stderr,
               "ledger: run %lld (%s, %d clients) %.1fs: %lld attempts: %lld acknowledged, %lld "
               "failed, %lld unknown; %lld connect failures\n",
               static_cast<long long>(r.run), r.explicit_tx ? "tx" : "autocommit", r.clients,
               static_cast<double>(r.elapsed_ms) / 1000.0, static_cast<long long>(c.attempts),
               static_cast<long long>(c.acknowledged), static_cast<long long>(c.failed),
               static_cast<long long>(c.unknown), static_cast<long long>(c.connect_failures));
  for (const auto& e : r.errors) {
    std::fprintf(stderr, "ledger:   %-9s %s x%lld at %lld..%lld ms: %s\n",
                 std::string(to_string(e.phase)).c_str(), e.sqlstate.c_str(),
                 static_cast<long long>(e.count), static_cast<long long>(e.first_t_ms),
                 static_cast<long long>(e.last_t_ms), e.example.c_str());
  }
  if (r.timeline.empty()) {
    return;
  }
  if (auto g = longest_ack_gap(r.timeline)) {
    std::fprintf(stderr, "ledger: longest write gap (any client): %s, from %lld to %lld ms\n",
                 ms(g->length_ms()).c_str(), static_cast<long long>(g->from_ms),
                 static_cast<long long>(g->to_ms));
  } else {
    std::fprintf(stderr, "ledger: longest write gap (any client): under %lld ms\n",
                 static_cast<long long>(r.split_gap_ms));
  }
  const auto last = last_ack_ms(r.timeline);
  std::fprintf(stderr, "ledger: last acknowledged write at %s; the run ended at %lld ms\n",
               last ? ms(*last).c_str() : "(none)", static_cast<long long>(r.elapsed_ms));
  std::string per_client;
  for (int i = 0; i < r.clients && i < 32; ++i) {
    auto g = longest_ack_gap(r.timeline, i);
    per_client +=
        " c" + std::to_string(i) + "=" +
        (g ? std::to_string(g->length_ms()) + "@" + std::to_string(g->from_ms) : std::string("-"));
  }
  std::fprintf(stderr, "ledger: longest gap per client (ms@from):%s%s\n", per_client.c_str(),
               r.clients > 32 ? " ..." : "");
}

void print_window(const RunReport& r, std::int64_t at) {
  auto show = [](const AckWindow& w) {
    auto opt = [](std::optional<std::int64_t> v) {
      return v ? std::to_string(*v) : std::string("none");
    };
    return "last ack " + opt(w.last_before_ms) + ", first after " + opt(w.first_after_ms) +
           ", gap " + opt(w.gap_ms());
  };
  std::fprintf(stderr, "ledger: around t=%lld ms: %s (any client)\n", static_cast<long long>(at),
               show(ack_window(r.timeline, at)).c_str());
  for (int i = 0; i < r.clients && i < 32; ++i) {
    std::fprintf(stderr, "ledger:   c%d: %s\n", i, show(ack_window(r.timeline, at, i)).c_str());
  }
}

int cmd_setup(const Args& a) {
  Status s = setup(a.conninfo, a.truncate);
  if (!s.ok()) {
    std::fprintf(stderr, "pgkeel-ledger: %s\n", s.error.c_str());
    return 2;
  }
  std::fprintf(stderr, "ledger: table pgkeel_ledger ready%s\n", a.truncate ? " (truncated)" : "");
  return 0;
}

bool write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    f.flush();
    if (!f) {
      return false;
    }
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

int cmd_run(const Args& a) {
  WriterOptions o;
  o.conninfo = a.conninfo;
  o.clients = a.clients;
  if (a.duration_s) {
    o.duration = std::chrono::milliseconds(static_cast<std::int64_t>(*a.duration_s * 1000.0));
  }
  o.count = a.count;
  o.rate = a.rate;
  o.explicit_tx = a.tx;
  o.split_gap_ms = a.split_gap_ms;
  o.statement_timeout =
      std::chrono::milliseconds(static_cast<std::int64_t>(a.statement_timeout_s * 1000.0));

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  Writer w(o);
  Status s = w.start();
  if (!s.ok()) {
    std::fprintf(stderr, "pgkeel-ledger: %s\n", s.error.c_str());
    return 2;
  }
  Progress last{};
  auto next_line = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (!w.finished()) {
    if (g_signalled) {
      std::fprintf(stderr, "ledger: signal: stopping the clients\n");
      w.stop();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (std::chrono::steady_clock::now() < next_line) {
      continue;
    }
    next_line += std::chrono::seconds(1);
    const Progress p = w.progress();
    std::fprintf(stderr,
                 "ledger: t=%5.1fs ack=%lld (+%lld) failed=%lld unknown=%lld "
                 "connect_failures=%lld connected=%d/%d\n",
                 static_cast<double>(p.t_ms) / 1000.0, static_cast<long long>(p.acknowledged),
                 static_cast<long long>(p.acknowledged - last.acknowledged),
                 static_cast<long long>(p.failed), static_cast<long long>(p.unknown),
                 static_cast<long long>(p.connect_failures), p.connected, a.clients);
    last = p;
  }
  const RunReport r = w.wait();
  print_run_summary(r);
  if (!write_file(a.out, to_json(r))) {
    std::fprintf(stderr, "pgkeel-ledger: cannot write %s: %s\n", a.out.c_str(),
                 std::strerror(errno));
    return 2;
  }
  std::fprintf(stderr, "ledger: wrote %s (id range %lld..%lld)\n", a.out.c_str(),
               static_cast<long long>(r.id_range().first),
               static_cast<long long>(r.id_range().last));
  return 0;
}

std::string describe_ids(const std::vector<std::int64_t>& ids, std::int64_t id_base) {
  std::string out;
  for (std::size_t i = 0; i < ids.size() && i < 10; ++i) {
    const std::int64_t off = ids[i] - id_base;
    out += " " + std::to_string(ids[i]) + "(c" + std::to_string(off / kClientStride) + " s" +
           std::to_string(off % kClientStride) + ")";
  }
  if (ids.size() > 10) {
    out += " ...";
  }
  return out;
}

int cmd_verify(const Args& a) {
  std::ifstream f(a.in, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "pgkeel-ledger: cannot read %s: %s\n", a.in.c_str(), std::strerror(errno));
    return 2;
  }
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::string error;
  auto loaded = parse_run(text, error);
  if (!loaded) {
    std::fprintf(stderr, "pgkeel-ledger: %s: %s\n", a.in.c_str(), error.c_str());
    return 2;
  }
  const RunReport& r = loaded->report;
  if (!r.timeline.empty()) {
    print_run_summary(r);
    if (a.at_ms || a.at_unix_ms) {
      print_window(r, a.at_ms ? *a.at_ms : *a.at_unix_ms - r.started_at_unix_ms);
    }
  }
  const Verdict v = verify(a.conninfo, loaded->ids, loaded->id_range);
  if (!v.error.empty()) {
    std::fprintf(stderr, "pgkeel-ledger: verify: %s\n", v.error.c_str());
    return 2;
  }
  const std::int64_t base = loaded->id_range.first;
  std::vector<std::int64_t> dup_ids;
  for (const auto& d : v.duplicates) {
    dup_ids.push_back(d.id);
  }
  std::printf("verify: %lld rows read for %lld acknowledged, %lld failed, %lld unknown attempts\n",
              static_cast<long long>(v.rows_read), static_cast<long long>(v.acknowledged),
              static_cast<long long>(v.failed), static_cast<long long>(v.unknown));
  std::printf("  lost (acknowledged, missing): %zu%s\n", v.lost.size(),
              describe_ids(v.lost, base).c_str());
  std::printf("  duplicated ids:               %zu%s\n", v.duplicates.size(),
              describe_ids(dup_ids, base).c_str());
  std::printf("  failed, yet present:          %zu%s\n", v.failed_present.size(),
              describe_ids(v.failed_present, base).c_str());
  std::printf("  unknown: committed %zu, not committed %lld%s\n", v.unknown_found.size(),
              static_cast<long long>(v.unknown_missing),
              describe_ids(v.unknown_found, base).c_str());
  std::printf("  never attempted, yet present: %zu%s\n", v.unexpected.size(),
              describe_ids(v.unexpected, base).c_str());
  std::printf("verdict: %s\n", v.ok() ? "OK" : "FAIL");
  return v.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse_args(argc, argv);
  if (a.command == "setup") {
    return cmd_setup(a);
  }
  if (a.command == "run") {
    return cmd_run(a);
  }
  return cmd_verify(a);
}
