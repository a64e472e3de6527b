// pgkeel — a PostgreSQL-aware failover proxy and connection router.
#include <event2/event.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "conf/load.h"
#include "proxy/log.h"
#include "proxy/proxy.h"

namespace {

// libevent's own messages (e.g. "Error from accept() call" of a listener without an error
// callback) become pgkeel log lines, under the same rate limit as every other line.
void libevent_message(int severity, const char* msg) {
  using pgkeel::log::Level;
  const Level level = severity >= EVENT_LOG_ERR    ? Level::kError
                      : severity == EVENT_LOG_WARN ? Level::kWarning
                      : severity == EVENT_LOG_MSG  ? Level::kInfo
                                                   : Level::kDebug;
  pgkeel::log::Line(level, "libevent").kv("event", "message").kv("message", msg != nullptr ? msg : "").emit();
}

void usage() {
  std::fprintf(stderr,
               "usage: pgkeel -c FILE            run with the configuration in FILE\n"
               "       pgkeel --takeover -c FILE  take over from the pgkeel running with FILE (its\n"
               "                                  listeners, without a refused connection; it drains)\n"
               "       pgkeel --check-config -c FILE   validate FILE, print every error, exit\n"
               "       pgkeel --version\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool check_only = false;
  pgkeel::proxy::RunOptions options;
  options.command.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "-c" || a == "--config") && i + 1 < argc) {
      config_path = argv[++i];
      options.command.insert(options.command.end(), {a, config_path});
    } else if (a == "--takeover") {
      options.takeover = true;
    } else if (a == "--check-config") {
      check_only = true;
    } else if (a == "--version" || a == "-V") {
      std::printf("pgkeel %s\n", PGKEEL_VERSION);
      return 0;
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else {
      std::fprintf(stderr, "pgkeel: unknown argument '%s'\n", a.c_str());
      usage();
      return 2;
    }
  }
  if (config_path.empty()) {
    usage();
    return 2;
  }
  pgkeel::conf::LoadResult res = pgkeel::conf::load_config(config_path);
  if (!res.errors.empty()) {
    for (const auto& e : res.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    std::fprintf(stderr, "pgkeel: %zu configuration error(s)\n", res.errors.size());
    return 1;
  }
  if (check_only) {
    std::printf("%s: configuration OK\n", config_path.c_str());
    return 0;
  }
  event_set_log_callback(&libevent_message);
  return pgkeel::proxy::run(*res.config, options);
}
