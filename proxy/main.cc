// pgkeel — a PostgreSQL-aware failover proxy and connection router.
#include <cstdio>
#include <cstring>
#include <string>

#include "conf/load.h"
#include "proxy/proxy.h"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: pgkeel -c FILE            run with the configuration in FILE\n"
               "       pgkeel --check-config -c FILE   validate FILE, print every error, exit\n"
               "       pgkeel --version\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "-c" || a == "--config") && i + 1 < argc) {
      config_path = argv[++i];
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
  return pgkeel::proxy::run(*res.config);
}
