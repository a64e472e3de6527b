// tools/drill/actions.cc — console queries through libpq, and fault injection by signals, SQL on a
// node, `ip link` on a node's bridge port, and the rehearsal's restart command. Nothing here throws; failures become text in the
// report.
#include "tools/drill/actions.h"

#include <dirent.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "tools/ledger/ledger.h"

namespace pgkeel::drill {
namespace {

using ledger::PgConnPtr;
using ledger::PgResultPtr;

std::string trim_error(const char* message) {
  std::string s = message != nullptr ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
    s.pop_back();
  }
  for (auto& c : s) {
    if (c == '\n' || c == '\t') {
      c = ' ';
    }
  }
  return s;
}

PgConnPtr open(const std::string& conninfo, int timeout_s) {
  const std::string t = std::to_string(timeout_s);
  const char* const keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* const values[] = {t.c_str(), "pgkeel-drill", conninfo.c_str(), nullptr};
  return PgConnPtr(PQconnectdbParams(keys, values, 1));
}

std::optional<pid_t> postmaster_pid(const std::string& data_dir) {
  std::ifstream in(data_dir + "/postmaster.pid");
  std::string line;
  if (!in || !std::getline(in, line)) {
    return std::nullopt;
  }
  pid_t pid = 0;
  auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), pid);
  if (ec != std::errc() || pid <= 1) {
    return std::nullopt;
  }
  return pid;
}

// The direct children of pid (a postmaster's backends and auxiliary processes), from /proc.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/proc"), closedir);
  if (!dir) {
    return out;
  }
  while (dirent* e = readdir(dir.get())) {
    pid_t pid = 0;
    const std::string_view name = e->d_name;
    auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), pid);
    if (ec != std::errc() || end != name.data() + name.size()) {
      continue;
    }
    std::ifstream stat("/proc/" + std::string(name) + "/stat");
    std::string text;
    std::getline(stat, text);
    const auto close = text.rfind(')');
    if (close == std::string::npos) {
      continue;
    }
    std::istringstream rest(text.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) {
      out.push_back(pid);
    }
  }
  return out;
}

// argv run without a shell and waited for: "" when it exited 0, else the command and its output.
std::string run_argv(const std::vector<std::string>& args) {
  std::string command;
  for (const auto& a : args) {
    command += (command.empty() ? "" : " ") + a;
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return command + ": pipe: " + std::strerror(errno);
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  std::vector<char*> argv;
  for (const auto& a : args) {
    argv.push_back(const_cast<char*>(a.c_str()));
  }
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  std::string output;
  char buf[512];
  for (ssize_t n = 0; (n = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (n > 0) {
      output.append(buf, static_cast<std::size_t>(n));
    } else if (errno != EINTR) {
      break;
    }
  }
  ::close(fds[0]);
  if (rc != 0) {
    return command + ": " + std::strerror(rc);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return "";
  }
  return command + ": " + (output.empty() ? "failed" : trim_error(output.c_str())) + " (status " +
         std::to_string(status) + ")";
}

const NodeRef* find_node(const World& w, const std::string& name) {
  for (const auto& n : w.nodes) {
    if (n.name == name) {
      return &n;
    }
  }
  return nullptr;
}

std::string node_conninfo(const World& w, const NodeRef& n) {
  return "host=" + (n.host.empty() ? w.node_host : n.host) + " port=" + std::to_string(n.port) + " " + w.node_conninfo;
}

// A node on another machine (or container): its postmaster is killed by itself, through a
// superuser's COPY TO PROGRAM (the program runs as the server's OS user). Only SIGKILL this way:
// a SIGSTOPped server could not be told to continue.
Injection sql_kill(const World& w, const NodeRef& n) {
  Injection in;
  in.target = n.name;
  PgConnPtr conn = open(node_conninfo(w, n), 3);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    in.detail = "connect to " + n.name + ": " + trim_error(conn ? PQerrorMessage(conn.get()) : "out of memory");
    return in;
  }
  PgResultPtr res(PQexec(conn.get(), "SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1)"));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQntuples(res.get()) != 1) {
    in.detail = "reading postmaster.pid on " + n.name + ": " +
                trim_error(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get()));
    return in;
  }
  const std::string pid = PQgetvalue(res.get(), 0, 0);
  if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) {
    in.detail = "unexpected postmaster pid '" + pid + "' on " + n.name;
    return in;
  }
  PgResultPtr kill(PQexec(conn.get(), ("COPY (SELECT 1) TO PROGRAM 'kill -9 " + pid + "'").c_str()));
  // The answer may never come: the server is gone. Success is the postmaster not answering.
  in.ok = true;
  in.detail = "kill -9 of the postmaster of " + n.name + " (pid " + pid + ") through COPY TO PROGRAM";
  return in;
}

// The node a fault aims at: the one named, else the current writer.
std::optional<std::string> primary_or(const World& w, const Fault& f, std::string& why) {
  if (!f.node.empty()) {
    return f.node;
  }
  const RouteNow r = current_route(w.console_conninfo);
  if (!r.ok || r.primary.empty()) {
    why = r.ok ? "pgkeel routes writes nowhere right now" : "the console did not answer SHOW ROUTES";
    return std::nullopt;
  }
  return r.primary;
}

// The named node, with `in` aimed at it; nullptr, and why in in.detail, when the env lacks it.
const NodeRef* aim(const World& w, const std::string& name, Injection& in) {
  in.target = name;
  const NodeRef* n = find_node(w, name);
  if (n == nullptr) {
    in.detail = "no node '" + name + "' in the cluster env";
  }
  return n;
}

Injection signal_node(const World& w, const std::string& name, int sig, bool all, const char* verb) {
  Injection in;
  const NodeRef* n = aim(w, name, in);
  if (n == nullptr) {
    return in;
  }
  if (n->data_dir.empty()) {
    if (sig == SIGKILL) {
      return sql_kill(w, *n);
    }
    in.detail = std::string(verb) + " " + name + " needs the node on this machine (--cluster-env)";
    return in;
  }
  const auto pid = postmaster_pid(n->data_dir);
  if (!pid) {
    in.detail = "no postmaster.pid in " + n->data_dir;
    return in;
  }
  std::vector<pid_t> pids{*pid};
  if (all) {
    for (pid_t c : children_of(*pid)) {
      pids.push_back(c);
    }
  }
  int done = 0;
  std::string failures;
  for (pid_t p : pids) {
    if (::kill(p, sig) == 0) {
      ++done;
      in.stopped.push_back(p);
    } else {
      failures += " " + std::to_string(p) + ": " + std::strerror(errno);
    }
  }
  in.ok = done > 0;
  in.detail = std::string(verb) + " " + std::to_string(done) + " process(es) of " + name + " (postmaster " +
              std::to_string(*pid) + ")" + (failures.empty() ? "" : "; failed:" + failures);
  return in;
}

// The node's bridge port down or up: with static neighbour entries (cluster.sh up --netns) a
// node whose port is down is silent both ways, so connections to it time out and its standbys
// lose it too, as in a real network split.
Injection set_link(const World& w, const std::string& name, const std::string& state) {
  Injection in;
  const NodeRef* n = aim(w, name, in);
  if (n == nullptr) {
    return in;
  }
  if (n->link.empty()) {
    in.detail = name + " is not in a network namespace (tools/cluster.sh up --netns, tools/rehearsal.sh up --netns)";
    return in;
  }
  const std::string error = run_argv({"ip", "link", "set", "dev", n->link, state});
  in.ok = error.empty();
  in.detail = in.ok ? "link " + n->link + " of " + name + " " + state : error;
  return in;
}

Injection console_command(const World& w, const std::string& sql, int timeout_s) {
  Injection in;
  const ConsoleTable t = console_query(w.console_conninfo, sql, timeout_s);
  in.ok = t.error.empty();
  in.detail = sql + (in.ok ? ": done" : ": " + t.error);
  return in;
}

std::string node_sql(const World& w, const std::string& name, const std::string& sql) {
  const NodeRef* n = find_node(w, name);
  if (n == nullptr) {
    return "no node '" + name + "' in the cluster env";
  }
  PgConnPtr conn = open(node_conninfo(w, *n), 3);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    return "connect to " + name + ": " + trim_error(conn ? PQerrorMessage(conn.get()) : "out of memory");
  }
  PgResultPtr res(PQexec(conn.get(), sql.c_str()));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    return sql + " on " + name + ": " + trim_error(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get()));
  }
  return "";
}

}  // namespace

std::map<std::string, std::string> read_env_file(const std::string& path, std::string& error) {
  std::map<std::string, std::string> env;
  std::ifstream in(path);
  if (!in) {
    error = "cannot read " + path;
    return env;
  }
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos || eq == 0) {
      continue;
    }
    std::string key = line.substr(0, eq);
    if (key.rfind("export ", 0) == 0) {
      key = key.substr(7);
    }
    std::string value = line.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    env[key] = value;
  }
  return env;
}

std::optional<NodeRef> parse_node(const std::string& spec) {
  const auto eq = spec.find('=');
  const auto colon = spec.rfind(':');
  if (eq == std::string::npos || colon == std::string::npos || colon < eq || eq == 0) {
    return std::nullopt;
  }
  NodeRef n;
  n.name = spec.substr(0, eq);
  n.host = spec.substr(eq + 1, colon - eq - 1);
  n.port = std::atoi(spec.c_str() + colon + 1);
  if (n.host.empty() || n.port <= 0 || n.port > 65535) {
    return std::nullopt;
  }
  return n;
}

std::vector<NodeRef> nodes_from_env(const std::map<std::string, std::string>& env) {
  std::vector<NodeRef> nodes;
  auto it = env.find("NODES");
  if (it == env.end()) {
    return nodes;
  }
  std::istringstream names(it->second);
  std::string name;
  while (names >> name) {
    std::string upper = name;
    for (auto& c : upper) {
      c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    NodeRef n;
    n.name = name;
    if (auto p = env.find(upper + "_PORT"); p != env.end()) {
      n.port = std::atoi(p->second.c_str());
    }
    if (auto d = env.find(upper + "_DATA"); d != env.end()) {
      n.data_dir = d->second;
    }
    if (auto h = env.find(upper + "_HOST"); h != env.end()) {
      n.host = h->second;
    }
    if (auto l = env.find(upper + "_LINK"); l != env.end()) {
      n.link = l->second;
    }
    nodes.push_back(n);
  }
  return nodes;
}

std::string ConsoleTable::cell(std::size_t row, const std::string& column) const {
  for (std::size_t c = 0; c < columns.size(); ++c) {
    if (columns[c] == column && row < rows.size() && c < rows[row].size()) {
      return rows[row][c];
    }
  }
  return "";
}

ConsoleTable console_query(const std::string& conninfo, const std::string& sql, int timeout_s) {
  ConsoleTable t;
  PgConnPtr conn = open(conninfo, timeout_s);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    t.error = "console: " + trim_error(conn ? PQerrorMessage(conn.get()) : "out of memory");
    return t;
  }
  PgResultPtr res(PQexec(conn.get(), sql.c_str()));
  const auto status = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    t.error = trim_error(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get()));
    return t;
  }
  for (int c = 0; c < PQnfields(res.get()); ++c) {
    t.columns.emplace_back(PQfname(res.get(), c));
  }
  for (int r = 0; r < PQntuples(res.get()); ++r) {
    auto& row = t.rows.emplace_back();
    for (int c = 0; c < PQnfields(res.get()); ++c) {
      row.emplace_back(PQgetvalue(res.get(), r, c));
    }
  }
  return t;
}

RouteNow current_route(const std::string& console_conninfo) {
  RouteNow r;
  const ConsoleTable t = console_query(console_conninfo, "SHOW ROUTES", 2);
  if (!t.error.empty()) {
    return r;
  }
  for (std::size_t i = 0; i < t.rows.size(); ++i) {
    if (t.cell(i, "intent") == "read-write") {
      r.ok = true;
      r.primary = t.cell(i, "node");
      r.epoch = std::atoll(t.cell(i, "epoch").c_str());
      return r;
    }
  }
  if (!t.rows.empty()) {
    r.ok = true;
    r.epoch = std::atoll(t.cell(0, "epoch").c_str());
  }
  return r;
}

std::vector<ConsoleEvent> console_events(const std::string& console_conninfo, std::int64_t started_at_unix_ms,
                                         std::string& error) {
  std::vector<ConsoleEvent> out;
  const ConsoleTable t = console_query(console_conninfo, "SHOW EVENTS", 5);
  if (!t.error.empty()) {
    error = t.error;
    return out;
  }
  for (std::size_t i = 0; i < t.rows.size(); ++i) {
    const auto at = parse_iso_utc_ms(t.cell(i, "time"));
    if (!at) {
      continue;
    }
    out.push_back({*at - started_at_unix_ms, std::atoll(t.cell(i, "epoch").c_str()), t.cell(i, "kind"),
                   t.cell(i, "node"), t.cell(i, "detail")});
  }
  std::stable_sort(out.begin(), out.end(), [](const ConsoleEvent& a, const ConsoleEvent& b) { return a.t_ms < b.t_ms; });
  return out;
}

Injection inject(const World& w, const Fault& f) {
  std::string why;
  switch (f.kind) {
    case FaultKind::kKill: {
      auto node = primary_or(w, f, why);
      if (!node) {
        return {false, "", why, std::nullopt, {}};
      }
      return signal_node(w, *node, SIGKILL, f.all_processes, "kill -9 of");
    }
    case FaultKind::kHang: {
      auto node = primary_or(w, f, why);
      if (!node) {
        return {false, "", why, std::nullopt, {}};
      }
      Injection in = signal_node(w, *node, SIGSTOP, /*all=*/true, "SIGSTOP of");
      in.undo_after_ms = f.for_ms.value_or(10'000);
      return in;
    }
    case FaultKind::kSwitchover:
    case FaultKind::kFailover: {
      // The target is the primary being replaced, read before the command changes it.
      const std::string verb = f.kind == FaultKind::kSwitchover ? "SWITCHOVER" : "FAILOVER";
      const std::string before = current_route(w.console_conninfo).primary;
      Injection in = console_command(w, f.node.empty() ? verb : verb + " TO " + f.node, 90);
      in.target = before;
      return in;
    }
    case FaultKind::kRestartProxy: {
      Injection in;
      in.target = "pgkeel";
      if (w.restart_command.empty()) {
        in.detail = "no restart command (PGKEEL_RESTART_COMMAND in the env file, or --restart-command)";
        return in;
      }
      const int rc = std::system(w.restart_command.c_str());
      in.ok = rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
      in.detail = w.restart_command + (in.ok ? ": done" : ": failed (status " + std::to_string(rc) + ")");
      return in;
    }
    case FaultKind::kLag: {
      Injection in;
      std::string node = f.node;
      if (node.empty()) {
        const ConsoleTable t = console_query(w.console_conninfo, "SHOW NODES", 3);
        for (std::size_t i = 0; i < t.rows.size() && node.empty(); ++i) {
          if (t.cell(i, "role").rfind("standby", 0) == 0 && t.cell(i, "state") == "up") {
            node = t.cell(i, "name");
          }
        }
      }
      in.target = node;
      if (node.empty()) {
        in.detail = "no standby is up";
        return in;
      }
      const std::string err = node_sql(w, node, "SELECT pg_wal_replay_pause()");
      in.ok = err.empty();
      in.detail = in.ok ? "pg_wal_replay_pause() on " + node : err;
      in.undo_after_ms = f.for_ms;
      return in;
    }
    case FaultKind::kSyncLoss: {
      std::string node = f.node;
      if (node.empty()) {
        const ConsoleTable t = console_query(w.console_conninfo, "SHOW NODES", 3);
        for (std::size_t i = 0; i < t.rows.size() && node.empty(); ++i) {
          const std::string s = t.cell(i, "sync_state");
          if (s == "sync" || s == "quorum") {
            node = t.cell(i, "name");
          }
        }
      }
      if (node.empty()) {
        return {false, "", "no standby is synchronous now (SHOW NODES sync_state)", std::nullopt, {}};
      }
      return signal_node(w, node, SIGKILL, false, "kill -9 of");
    }
    case FaultKind::kPartition: {
      auto node = primary_or(w, f, why);
      if (!node) {
        return {false, "", why, std::nullopt, {}};
      }
      Injection in = set_link(w, *node, "down");
      in.undo_after_ms = f.for_ms.value_or(10'000);
      return in;
    }
  }
  return {false, "", "unknown fault", std::nullopt, {}};
}

std::string undo(const World& w, const Fault& f, const Injection& in) {
  if (f.kind == FaultKind::kHang) {
    int n = 0;
    for (pid_t p : in.stopped) {
      n += ::kill(p, SIGCONT) == 0 ? 1 : 0;
    }
    return "SIGCONT of " + std::to_string(n) + " process(es) of " + in.target;
  }
  if (f.kind == FaultKind::kLag) {
    const std::string err = node_sql(w, in.target, "SELECT pg_wal_replay_resume()");
    return err.empty() ? "pg_wal_replay_resume() on " + in.target : err;
  }
  if (f.kind == FaultKind::kPartition) {
    return set_link(w, in.target, "up").detail;
  }
  return "";
}

}  // namespace pgkeel::drill
