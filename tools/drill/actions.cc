// tools/drill/actions.cc — console queries through libpq, and fault injection by signals, SQL on a
// node, `ip link` on a node's bridge port, the rehearsal's restart command, and iptables rules in
// a pgkeel instance's network namespace. Nothing here throws; failures become text in the report.
#include "tools/drill/actions.h"

#include <dirent.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

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

extern "C" void ignore_notice(void* /*arg*/, const char* /*message*/) {}

// A connection whose NOTICEs (the console explains SHOW NODES with one) are not printed: the
// drill's output is its live view and its verdict.
PgConnPtr open(const std::string& conninfo, int timeout_s) {
  const std::string t = std::to_string(timeout_s);
  const char* const keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* const values[] = {t.c_str(), "pgkeel-drill", conninfo.c_str(), nullptr};
  PgConnPtr conn(PQconnectdbParams(keys, values, 1));
  if (conn) {
    PQsetNoticeProcessor(conn.get(), ignore_notice, nullptr);
  }
  return conn;
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

// A process's state letter from /proc/<pid>/stat (R, S, D, T, Z, ...); 0 when there is none.
char process_state(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  std::getline(stat, text);
  const auto close = text.rfind(')');
  return close == std::string::npos || close + 2 >= text.size() ? '\0' : text[close + 2];
}

bool process_gone(pid_t pid) {
  const char state = process_state(pid);
  return state == '\0' || state == 'Z' || state == 'X';
}

using SteadyClock = std::chrono::steady_clock;

std::int64_t ms_since(SteadyClock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - t).count();
}

// Polls `seen` every 50 ms until it holds or timeout_ms have passed; true when it held.
template <typename Pred>
bool eventually(std::int64_t timeout_ms, Pred seen) {
  const auto start = SteadyClock::now();
  while (true) {
    if (seen()) {
      return true;
    }
    if (ms_since(start) >= timeout_ms) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
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
// a SIGSTOPped server could not be told to continue. The command returning is no proof: in a
// container whose postmaster is PID 1 the kernel ignores the signal. The kill counts as seen when
// the node then refuses connections, or answers from a postmaster started later.
Injection sql_kill(const World& w, const NodeRef& n) {
  Injection in;
  in.target = n.name;
  const std::string conninfo = node_conninfo(w, n);
  PgConnPtr conn = open(conninfo, 3);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    in.detail = "connect to " + n.name + ": " + trim_error(conn ? PQerrorMessage(conn.get()) : "out of memory");
    return in;
  }
  PgResultPtr res(PQexec(conn.get(),
                         "SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1), pg_postmaster_start_time()::text"));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQntuples(res.get()) != 1) {
    in.detail = "reading postmaster.pid on " + n.name + ": " +
                trim_error(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get()));
    return in;
  }
  const std::string pid = PQgetvalue(res.get(), 0, 0);
  const std::string started = PQgetvalue(res.get(), 0, 1);
  if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) {
    in.detail = "unexpected postmaster pid '" + pid + "' on " + n.name;
    return in;
  }
  const auto sent = SteadyClock::now();
  PgResultPtr kill(PQexec(conn.get(), ("COPY (SELECT 1) TO PROGRAM 'kill -9 " + pid + "'").c_str()));
  const bool answered = kill && PQresultStatus(kill.get()) == PGRES_COMMAND_OK;
  const std::string kill_error = answered || !kill ? "" : trim_error(PQresultErrorMessage(kill.get()));
  conn.reset();
  in.ok = true;  // the answer may never come: the server is gone; what counts is what follows
  in.detail = "kill -9 of the postmaster of " + n.name + " (pid " + pid + ") through COPY TO PROGRAM" +
              (answered ? ", which returned" : kill_error.empty() ? "" : " (" + kill_error + ")");
  // Gone means two looks in a row (50 ms apart) without an answer from a server: one failed
  // connection alone could be the network's.
  std::string last;
  int silent = 0;
  in.effect_seen = eventually(kEffectTimeoutMs, [&] {
    PgConnPtr c = open(conninfo, 1);
    if (!c || PQstatus(c.get()) != CONNECTION_OK) {
      const std::string error = trim_error(c ? PQerrorMessage(c.get()) : "out of memory");
      if (ledger::connect_failure_sqlstate(error) == "08001") {  // not an answer of a server
        in.effect = n.name + " serves no connection " + std::to_string(ms_since(sent)) + " ms after the kill: " + error;
        return ++silent >= 2;
      }
      silent = 0;
      last = "it answered: " + error;
      return false;
    }
    silent = 0;
    PgResultPtr now(PQexec(c.get(), "SELECT pg_postmaster_start_time()::text"));
    const std::string again = now && PQresultStatus(now.get()) == PGRES_TUPLES_OK ? PQgetvalue(now.get(), 0, 0) : "";
    if (!again.empty() && again != started) {
      in.effect = n.name + " answers from a postmaster started at " + again + ", not the one killed (" + started + ")";
      return true;
    }
    last = "it still accepts connections from the postmaster started at " + started;
    return false;
  });
  if (!in.effect_seen) {
    in.effect = "the postmaster of " + n.name + " (pid " + pid + ") survived kill -9: " +
                std::to_string(kEffectTimeoutMs) + " ms later " + last +
                (pid == "1" ? " (it is PID 1 of its container, and the kernel ignores SIGKILL sent to that from "
                              "inside the container)"
                            : "");
  }
  return in;
}

// A login as a client sees it: connected and SELECT 1 answered, or the server's SQLSTATE (from
// the verbose error text: libpq keeps no error field for a failed connection) and message.
struct Login {
  bool ok = false;
  std::string sqlstate;  // "" when no server answered (refused, timed out)
  std::string error;
};

Login try_login(const std::string& conninfo, int timeout_s) {
  Login l;
  const std::string t = std::to_string(timeout_s);
  const char* const keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
  const char* const values[] = {t.c_str(), "pgkeel-drill", conninfo.c_str(), nullptr};
  PgConnPtr conn(PQconnectStartParams(keys, values, 1));
  if (!conn || PQstatus(conn.get()) == CONNECTION_BAD) {
    l.error = trim_error(conn ? PQerrorMessage(conn.get()) : "out of memory");
    return l;
  }
  PQsetErrorVerbosity(conn.get(), PQERRORS_VERBOSE);
  PQsetNoticeProcessor(conn.get(), ignore_notice, nullptr);
  const auto start = std::chrono::steady_clock::now();
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
    const auto left = timeout_s * 1000 - std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now() - start)
                                             .count();
    if (left <= 0) {
      l.error = "timed out after " + t + " s";
      return l;
    }
    pollfd p{PQsocket(conn.get()), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
    if (::poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) {
      l.error = std::string("poll: ") + std::strerror(errno);
      return l;
    }
    st = PQconnectPoll(conn.get());
  }
  if (st == PGRES_POLLING_FAILED) {
    l.error = trim_error(PQerrorMessage(conn.get()));
    // "FATAL:  57P03: the message" (the severity, two spaces, the code, a colon)
    for (auto at = l.error.find(":  "); at != std::string::npos; at = l.error.find(":  ", at + 1)) {
      const std::string code = l.error.substr(at + 3, 6);
      if (code.size() == 6 && code[5] == ':' &&
          code.find_first_not_of("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5) {
        l.sqlstate = code.substr(0, 5);
        break;
      }
    }
    return l;
  }
  PgResultPtr res(PQexec(conn.get(), "SELECT 1"));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    l.error = "SELECT 1: " + trim_error(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get()));
    const char* code = res ? PQresultErrorField(res.get(), PG_DIAG_SQLSTATE) : nullptr;
    l.sqlstate = code != nullptr ? code : "";
    return l;
  }
  l.ok = true;
  return l;
}

std::optional<pid_t> read_pid(const std::string& file) {
  std::ifstream in(file);
  long pid = 0;
  if (!(in >> pid) || pid <= 1) {
    return std::nullopt;
  }
  return static_cast<pid_t>(pid);
}

const InstanceRef* find_instance(const World& w, const std::string& name) {
  for (const auto& i : w.instances) {
    if (i.name == name) {
      return &i;
    }
  }
  return nullptr;
}

// The instance a proxy fault aims at: the one named, else the store leader; nullptr, with why
// in in.detail, when there is none. Sets in.target and in.hit_leader.
const InstanceRef* aim_instance(const World& w, const Fault& f, Injection& in) {
  std::string why;
  const std::string leader = store_leader(w, why);
  in.target = f.node.empty() ? leader : f.node;
  in.hit_leader = !leader.empty() && in.target == leader;
  if (in.target.empty()) {
    in.detail = "no instance to aim at: " + why;
    return nullptr;
  }
  const InstanceRef* i = find_instance(w, in.target);
  if (i == nullptr) {
    in.detail = "no instance '" + in.target + "' (--instance)";
  }
  return i;
}

std::string ms_text(std::int64_t ms) { return std::to_string(ms) + " ms"; }

// kill -9 of the instance's process (its pid file), then its start command; seen when the process
// is gone, and back when a new process named in the pid file takes a login.
Injection kill_proxy(const World& w, const Fault& f) {
  Injection in;
  const InstanceRef* i = aim_instance(w, f, in);
  if (i == nullptr) {
    return in;
  }
  if (i->pidfile.empty()) {
    in.detail = "instance " + i->name + " has no pid file (pidfile= in --instance)";
    return in;
  }
  if (w.proxy_start_command.empty()) {
    in.detail = "no start command for instances (--proxy-start-command)";
    return in;
  }
  const auto pid = read_pid(i->pidfile);
  if (!pid || process_gone(*pid)) {
    in.detail = "no live pgkeel process named in " + i->pidfile;
    return in;
  }
  const auto sent = SteadyClock::now();
  if (::kill(*pid, SIGKILL) != 0) {
    in.detail = "kill -9 of " + i->name + " (pid " + std::to_string(*pid) + "): " + std::strerror(errno);
    return in;
  }
  in.ok = true;
  in.detail = "kill -9 of pgkeel instance " + i->name + (in.hit_leader ? " (the store leader)" : "") + " (pid " +
              std::to_string(*pid) + ")";
  const std::string what = "pgkeel " + i->name + " (pid " + std::to_string(*pid) + ")";
  in.effect_seen = eventually(kEffectTimeoutMs, [&] { return process_gone(*pid); });
  in.effect = in.effect_seen ? what + " is gone " + ms_text(ms_since(sent)) + " after the kill"
                             : what + " is still running " + ms_text(kEffectTimeoutMs) + " after kill -9";
  if (!in.effect_seen) {
    return in;
  }
  // Its output goes to the drill's stderr; the command must send pgkeel's own elsewhere (a log).
  const std::string cmd = "PGKEEL_INSTANCE='" + i->name + "' " + w.proxy_start_command + " '" + i->name + "' >&2";
  const int rc = std::system(cmd.c_str());
  if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
    in.back = w.proxy_start_command + " " + i->name + " failed (status " + std::to_string(rc) + ")";
    return in;
  }
  in.detail += "; started again by the start command at " + ms_text(ms_since(sent)) + " after the kill";
  std::string last;
  pid_t now_pid = 0;
  in.back_seen = eventually(kProxyBackTimeoutMs, [&] {
    const auto p = read_pid(i->pidfile);
    if (!p || *p == *pid || process_gone(*p)) {
      last = "no new live process named in " + i->pidfile;
      return false;
    }
    const Login l = try_login(listener_of(w, *i), 2);
    last = "login: " + l.error;
    now_pid = *p;
    return l.ok;
  });
  in.back = in.back_seen ? i->name + " serves again " + ms_text(ms_since(sent)) + " after the kill (pid " +
                               std::to_string(now_pid) + ")"
                         : i->name + " did not serve within " + ms_text(kProxyBackTimeoutMs) +
                               " of its start command: " + last;
  return in;
}

// The instance's traffic to etcd's client ports dropped both ways, inside its own namespace (no
// other process's traffic is touched): new connections time out and established ones go silent,
// as in a real network split. `flag` is -I to add, -D to remove.
std::string proxy_cut_rules(const World& w, const InstanceRef& i, const char* flag) {
  std::string ports;
  for (int p : w.etcd_ports) {
    ports += (ports.empty() ? "" : ",") + std::to_string(p);
  }
  std::string errors;
  for (const auto& [chain, match] : {std::pair<const char*, const char*>{"OUTPUT", "--dports"}, {"INPUT", "--sports"}}) {
    const std::string e = run_argv({"ip", "netns", "exec", i.netns, "iptables", "-w", flag, chain, "-p", "tcp", "-m",
                                    "multiport", match, ports, "-j", "DROP"});
    errors += e.empty() ? "" : (errors.empty() ? "" : "; ") + e;
  }
  return errors;
}

Injection partition_proxy(const World& w, const Fault& f) {
  Injection in;
  const InstanceRef* i = aim_instance(w, f, in);
  if (i == nullptr) {
    return in;
  }
  if (i->netns.empty()) {
    in.detail = "instance " + i->name + " runs in no network namespace of its own (netns= in --instance)";
    return in;
  }
  if (w.etcd_ports.empty()) {
    in.detail = "no etcd endpoints (--etcd-endpoints)";
    return in;
  }
  const auto sent = SteadyClock::now();
  const std::string error = proxy_cut_rules(w, *i, "-I");
  if (!error.empty()) {
    (void)proxy_cut_rules(w, *i, "-D");  // whichever got in
    in.detail = error;
    return in;
  }
  in.ok = true;
  in.undo_after_ms = f.for_ms.value_or(10'000);
  std::string ports;
  for (int p : w.etcd_ports) {
    ports += (ports.empty() ? "" : ",") + std::to_string(p);
  }
  in.detail = "pgkeel instance " + i->name + (in.hit_leader ? " (the store leader)" : "") +
              " cut off from etcd: tcp to and from ports " + ports + " dropped in namespace " + i->netns;
  // Seen when the instance refuses logins with 57P03, as it must once its lease cannot be renewed.
  std::string last;
  in.effect_seen = eventually(std::min(kProxyCutTimeoutMs, *in.undo_after_ms), [&] {
    const Login l = try_login(listener_of(w, *i), 2);
    if (l.ok) {
      last = "it still takes logins";
      return false;
    }
    last = l.error;
    return l.sqlstate == "57P03";
  });
  in.effect = in.effect_seen ? i->name + " refuses logins with 57P03 " + ms_text(ms_since(sent)) + " after the cut: " + last
                             : i->name + " did not refuse logins with 57P03 within " +
                                   ms_text(std::min(kProxyCutTimeoutMs, *in.undo_after_ms)) + " of the cut (" + last + ")";
  return in;
}

// The node a fault aims at: the one named, else the current writer; `writer` says whether it
// takes writes now (as far as the console says).
std::optional<std::string> primary_or(const World& w, const Fault& f, std::string& why, bool& writer) {
  const RouteNow r = current_route_any(w);
  writer = r.ok && !r.primary.empty() && (f.node.empty() || f.node == r.primary);
  if (!f.node.empty()) {
    return f.node;
  }
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
  if (!in.ok) {
    return in;
  }
  // The signal was delivered; now its effect on the postmaster, seen in /proc.
  const auto sent = SteadyClock::now();
  const std::string pm = "the postmaster of " + name + " (pid " + std::to_string(*pid) + ")";
  if (sig == SIGKILL) {
    in.effect_seen = eventually(kEffectTimeoutMs, [&] { return process_gone(*pid); });
    in.effect = in.effect_seen ? pm + " is gone " + std::to_string(ms_since(sent)) + " ms after the kill"
                               : pm + " is still running " + std::to_string(kEffectTimeoutMs) +
                                     " ms after kill -9 (state " + std::string(1, process_state(*pid)) + ")";
  } else if (sig == SIGSTOP) {
    in.effect_seen = eventually(kEffectTimeoutMs, [&] {
      const char state = process_state(*pid);
      return state == 'T' || state == 't';
    });
    const char state = process_state(*pid);
    in.effect = pm + (in.effect_seen ? " is stopped" : " is not stopped") + " (state " +
                (state == '\0' ? std::string("none: gone") : std::string(1, state)) + ")";
  } else {
    in.effect_seen = true;
  }
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
  // IFF_UP in the link's flags, as the kernel has it now
  std::ifstream flags_file("/sys/class/net/" + n->link + "/flags");
  std::string flags;
  flags_file >> flags;
  const unsigned long value = std::strtoul(flags.c_str(), nullptr, 16);
  const bool up = (value & 0x1UL) != 0;
  in.effect_seen = in.ok && !flags.empty() && up == (state == "up");
  in.effect = "link " + n->link + " flags " + (flags.empty() ? "unreadable" : flags) + " (" + (up ? "up" : "down") + ")";
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

// The first value of a one-row query on a node; "" with `error` set when it failed.
std::string node_value(const World& w, const std::string& name, const std::string& sql, std::string& error) {
  const NodeRef* n = find_node(w, name);
  if (n == nullptr) {
    error = "no node '" + name + "' in the cluster env";
    return "";
  }
  PgConnPtr conn = open(node_conninfo(w, *n), 3);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    error = "connect to " + name + ": " + trim_error(conn ? PQerrorMessage(conn.get()) : "out of memory");
    return "";
  }
  PgResultPtr res(PQexec(conn.get(), sql.c_str()));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQntuples(res.get()) < 1) {
    error = sql + " on " + name + ": " + trim_error(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get()));
    return "";
  }
  return PQgetvalue(res.get(), 0, 0);
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

std::string not_ready_because(const World& w, const std::string& conninfo, bool sync) {
  {
    PgConnPtr conn = open(conninfo, 3);
    if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
      return "login through pgkeel: " + trim_error(conn ? PQerrorMessage(conn.get()) : "out of memory");
    }
    PgResultPtr res(PQexec(conn.get(), "SELECT 1"));
    if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
      return "SELECT 1 through pgkeel: " + trim_error(res ? PQresultErrorMessage(res.get()) : PQerrorMessage(conn.get()));
    }
  }
  if (w.console_conninfo.empty()) {
    return "";
  }
  const RouteNow route = current_route(w.console_conninfo);
  if (!route.ok || route.primary.empty()) {
    return route.ok ? "pgkeel routes writes nowhere yet" : "the console does not answer SHOW ROUTES";
  }
  const ConsoleTable t = console_query(w.console_conninfo, "SHOW NODES", 3);
  if (!t.error.empty()) {
    return "SHOW NODES: " + t.error;
  }
  bool synchronous = false;
  for (std::size_t i = 0; i < t.rows.size(); ++i) {
    if (t.cell(i, "state") != "up") {
      return "node " + t.cell(i, "name") + " is " + t.cell(i, "state");
    }
    const std::string s = t.cell(i, "sync_state");
    synchronous = synchronous || (t.cell(i, "name") != route.primary && (s == "sync" || s == "quorum"));
  }
  if (sync && !synchronous) {
    return "no standby is synchronous yet (SHOW NODES sync_state)";
  }
  return "";
}

std::string not_whole_because(const World& w, const std::string& conninfo, bool sync) {
  std::string why = not_ready_because(w, conninfo, sync);
  if (!why.empty() || w.console_conninfo.empty()) {
    return why;
  }
  const ConsoleTable t = console_query(w.console_conninfo, "SHOW NODES", 3);
  if (!t.error.empty()) {
    return "SHOW NODES: " + t.error;
  }
  for (std::size_t i = 0; i < t.rows.size(); ++i) {
    const std::string name = t.cell(i, "name");
    if (t.cell(i, "fenced") == "yes") {
      return "node " + name + " is fenced" + (t.cell(i, "rejoin_why").empty() ? "" : ": " + t.cell(i, "rejoin_why"));
    }
    if (!t.cell(i, "rejoin").empty()) {
      return "node " + name + " is rejoining (" + t.cell(i, "rejoin") + ")";
    }
    const std::string standing = t.cell(i, "standing");
    if (!standing.empty() && standing != "follows" && standing != "writer") {
      return "node " + name + " stands as " + standing;
    }
  }
  return "";
}

std::optional<bool> node_running(const World& w, const std::string& name) {
  for (const auto& n : w.nodes) {
    if (n.name != name) {
      continue;
    }
    if (n.data_dir.empty()) {
      return std::nullopt;
    }
    // A killed postmaster stays a zombie until its parent (init, here) reaps it.
    const auto pid = postmaster_pid(n.data_dir);
    return pid && !process_gone(*pid);
  }
  return std::nullopt;
}

std::string start_node(const World& w, const std::string& node, std::int64_t patience_ms) {
  if (w.start_command.empty()) {
    return "no start command (PGKEEL_START_COMMAND in the env file, or --start-command)";
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(patience_ms);
  std::string last;
  while (true) {
    if (node_running(w, node).value_or(false)) {
      return "";
    }
    const std::string cmd = "PGKEEL_NODE_NAME='" + node + "' " + w.start_command + " '" + node + "' >/dev/null 2>&1";
    const int rc = std::system(cmd.c_str());
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0 && node_running(w, node).value_or(true)) {
      return "";
    }
    last = w.start_command + " for " + node + " failed (status " + std::to_string(rc) + ")";
    if (std::chrono::steady_clock::now() > deadline) {
      return last;
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
}

Injected inject_and_record(const World& w, const Fault& f, std::int64_t t_ms) {
  Injected out;
  out.record.fault = f;
  out.record.t_ms = t_ms;
  out.injection = inject(w, f);
  const Injection& in = out.injection;
  out.record.target = in.target;
  out.record.injected = in.ok;
  out.record.detail = in.detail;
  out.record.hit_writer = in.hit_writer;
  out.record.effect_seen = in.effect_seen;
  out.record.effect = in.effect;
  out.record.hit_leader = in.hit_leader;
  out.record.back_seen = in.back_seen;
  out.record.back = in.back;
  return out;
}

Injection inject(const World& w, const Fault& f) {
  std::string why;
  bool writer = false;
  switch (f.kind) {
    case FaultKind::kKill: {
      auto node = primary_or(w, f, why, writer);
      if (!node) {
        return {false, "", why, std::nullopt, {}};
      }
      Injection in = signal_node(w, *node, SIGKILL, f.all_processes, "kill -9 of");
      in.hit_writer = writer;
      return in;
    }
    case FaultKind::kHang: {
      auto node = primary_or(w, f, why, writer);
      if (!node) {
        return {false, "", why, std::nullopt, {}};
      }
      Injection in = signal_node(w, *node, SIGSTOP, /*all=*/true, "SIGSTOP of");
      in.undo_after_ms = f.for_ms.value_or(10'000);
      in.hit_writer = writer;
      return in;
    }
    case FaultKind::kSwitchover:
    case FaultKind::kFailover: {
      // The target is the primary being replaced, read before the command changes it. The
      // command's own answer is its effect; the promotion must then show in SHOW EVENTS.
      const std::string verb = f.kind == FaultKind::kSwitchover ? "SWITCHOVER" : "FAILOVER";
      const std::string before = current_route(w.console_conninfo).primary;
      Injection in = console_command(w, f.node.empty() ? verb : verb + " TO " + f.node, 90);
      in.target = before;
      in.hit_writer = !before.empty();
      in.effect_seen = in.ok;
      in.effect = in.ok ? "the console answered the command" : "the console refused the command";
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
      in.effect_seen = in.ok;
      in.effect = in.ok ? "the restart command exited 0" : "the restart command failed";
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
      if (in.ok) {
        std::string error;
        const std::string paused = node_value(w, node, "SELECT pg_is_wal_replay_paused()", error);
        in.effect_seen = paused == "t";
        in.effect = error.empty() ? "pg_is_wal_replay_paused() on " + node + ": " + paused : error;
      }
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
    case FaultKind::kKillProxy:
      return kill_proxy(w, f);
    case FaultKind::kPartitionProxy:
      return partition_proxy(w, f);
    case FaultKind::kPartition: {
      auto node = primary_or(w, f, why, writer);
      if (!node) {
        return {false, "", why, std::nullopt, {}};
      }
      Injection in = set_link(w, *node, "down");
      in.undo_after_ms = f.for_ms.value_or(10'000);
      in.hit_writer = writer;
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
  if (f.kind == FaultKind::kPartitionProxy) {
    const InstanceRef* i = find_instance(w, in.target);
    if (i == nullptr) {
      return "no instance '" + in.target + "'";
    }
    const std::string error = proxy_cut_rules(w, *i, "-D");
    return error.empty() ? "pgkeel instance " + i->name + " reaches etcd again (rules removed)" : error;
  }
  return "";
}

Undone undo_and_check(const World& w, const Fault& f, const Injection& in) {
  Undone u;
  const auto healed = SteadyClock::now();
  u.detail = undo(w, f, in);
  if (f.kind != FaultKind::kPartitionProxy) {
    return u;
  }
  u.checked = true;
  const InstanceRef* i = find_instance(w, in.target);
  if (i == nullptr) {
    u.back = "no instance '" + in.target + "'";
    return u;
  }
  std::string last;
  u.back_seen = eventually(kProxyBackTimeoutMs, [&] {
    const Login l = try_login(listener_of(w, *i), 2);
    last = l.error;
    return l.ok;
  });
  u.back = u.back_seen ? i->name + " serves again " + ms_text(ms_since(healed)) + " after the heal"
                       : i->name + " did not serve within " + ms_text(kProxyBackTimeoutMs) + " of the heal: " + last;
  return u;
}

std::string console_of(const World& w, const InstanceRef& i) {
  return w.instance_console_conninfo + " host=" + (i.console_host.empty() ? i.host : i.console_host) +
         " port=" + std::to_string(i.console_port);
}

std::string listener_of(const World& w, const InstanceRef& i) {
  return w.instance_conninfo + " host=" + i.host + " port=" + std::to_string(i.port) + " target_session_attrs=any";
}

RouteNow current_route_any(const World& w) {
  if (!w.console_conninfo.empty()) {
    const RouteNow r = current_route(w.console_conninfo);
    if (r.ok || w.instances.empty()) {
      return r;
    }
  }
  for (const auto& i : w.instances) {
    if (i.console_port == 0) {
      continue;
    }
    const RouteNow r = current_route(console_of(w, i));
    if (r.ok) {
      return r;
    }
  }
  return {};
}

std::string store_leader(const World& w, std::string& why) {
  why = "no instance has a console (console= in --instance)";
  for (const auto& i : w.instances) {
    if (i.console_port == 0) {
      continue;
    }
    const ConsoleTable t = console_query(console_of(w, i), "SHOW PEERS", 2);
    if (!t.error.empty()) {
      why = "SHOW PEERS on " + i.name + ": " + t.error;
      continue;
    }
    for (std::size_t r = 0; r < t.rows.size(); ++r) {
      if (t.cell(r, "role") == "leader") {
        return t.cell(r, "instance");
      }
    }
    why = "SHOW PEERS on " + i.name + " names no leader";
  }
  return "";
}

std::vector<ConsoleEvent> instance_events(const World& w, std::int64_t started_at_unix_ms) {
  std::vector<ConsoleEvent> out;
  for (const auto& i : w.instances) {
    if (i.console_port == 0) {
      continue;
    }
    std::string error;
    std::vector<ConsoleEvent> some = console_events(console_of(w, i), started_at_unix_ms, error);
    for (auto& e : some) {
      e.instance = i.name;
    }
    merge_events(out, some);
  }
  return out;
}

}  // namespace pgkeel::drill
