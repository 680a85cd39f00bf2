// kubectl-smtpd: a kubectl plugin that runs an smtpctl command in every pod
// of an smtpd release (through `kubectl exec`), in parallel, and merges the
// answers with a POD column (docs/SMTPCTL.md). A pod that does not answer
// is reported and does not hide the others; the exit status is 0 only when
// every pod answered and agreed.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "control/ctl_format.h"
#include "lib/observe/log.h"
#include "health.pb.h"
#include "smtpd/v1/policy.pb.h"
#include "smtpd/v1/queue.pb.h"

extern char** environ;

namespace {

using namespace smtpd;  // NOLINT
using control::render_table;

struct Result {
  int exit_code = -1;
  std::string out, err;
};

// Runs argv with `input` on stdin; collects stdout and stderr.
Result run(const std::vector<std::string>& argv, const std::string& input) {
  Result r;
  int in[2], out[2], err[2];
  if (pipe(in) != 0 || pipe(out) != 0 || pipe(err) != 0) {
    r.err = "pipe failed";
    return r;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) close(fd);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    r.err = "fork failed";
    return r;
  }
  signal(SIGPIPE, SIG_IGN);
  size_t written = 0;
  if (input.empty()) close(in[1]);
  struct pollfd fds[3] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}, {input.empty() ? -1 : in[1], POLLOUT, 0}};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0 || fds[2].fd >= 0) {
    if (poll(fds, 3, -1) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
    if (fds[2].fd >= 0 && (fds[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t n = write(fds[2].fd, input.data() + written, input.size() - written);
      if (n > 0) written += static_cast<size_t>(n);
      if (n <= 0 || written == input.size()) {
        close(fds[2].fd);
        fds[2].fd = -1;
      }
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

struct Options {
  std::string kubectl = "kubectl";
  std::string ns, context, container = "smtpd", selector = "app.kubernetes.io/name=smtpd";
  std::string output = "table";
  std::string smtpctl = "smtpctl";
  std::vector<std::string> passthrough;  // smtpctl global flags (--token, --timeout, ...)
};

std::vector<std::string> kubectl_base(const Options& o) {
  std::vector<std::string> a = {o.kubectl};
  if (!o.context.empty()) a.insert(a.end(), {"--context", o.context});
  if (!o.ns.empty()) a.insert(a.end(), {"-n", o.ns});
  return a;
}

struct PodAnswer {
  std::string pod;
  Result result;
  bool answered() const { return result.exit_code == 0 || result.exit_code == 1; }  // smtpctl ran
};

std::vector<PodAnswer> fan_out(const Options& o, const std::vector<std::string>& pods,
                               const std::vector<std::string>& command, const std::string& input) {
  std::vector<PodAnswer> answers(pods.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < pods.size(); ++i) {
    threads.emplace_back([&, i] {
      std::vector<std::string> a = kubectl_base(o);
      a.push_back("exec");
      if (!input.empty()) a.push_back("-i");
      a.insert(a.end(), {pods[i], "-c", o.container, "--", o.smtpctl});
      a.insert(a.end(), o.passthrough.begin(), o.passthrough.end());
      a.insert(a.end(), command.begin(), command.end());
      answers[i].pod = pods[i];
      answers[i].result = run(a, input);
    });
  }
  for (auto& t : threads) t.join();
  return answers;
}

// A pod's error in one line: smtpctl's message, or kubectl's.
std::string why(const PodAnswer& a) {
  std::string e = trim(a.result.err);
  const size_t nl = e.rfind('\n');
  if (nl != std::string::npos) e = e.substr(nl + 1);
  if (e.empty()) e = "exit status " + std::to_string(a.result.exit_code);
  return e;
}

template <typename M>
bool parse(const PodAnswer& a, M* m) {
  return control::from_json_or_yaml(a.result.out, m).ok();
}

// Reports pods without an answer on stderr; true when every pod answered.
bool report_missing(const std::vector<PodAnswer>& answers, bool (*ok)(const PodAnswer&)) {
  bool all = true;
  for (const auto& a : answers) {
    if (!ok(a)) {
      std::cerr << "kubectl-smtpd: pod " << a.pod << ": " << why(a) << "\n";
      all = false;
    }
  }
  return all;
}

std::string json_string(const std::string& s) {
  std::string out;
  observe::append_json_string(out, s);
  return out;
}

// -o json: every pod's answer as smtpctl printed it, or its error.
int print_json(const std::vector<PodAnswer>& answers) {
  std::string out = "{\"pods\": [";
  bool all = true;
  for (size_t i = 0; i < answers.size(); ++i) {
    const auto& a = answers[i];
    const bool ok = a.result.exit_code == 0;
    all = all && ok;
    out += std::string(i ? ",\n  " : "\n  ") + "{\"pod\": " + json_string(a.pod) + ", \"ok\": " + (ok ? "true" : "false");
    const std::string body = trim(a.result.out);
    if (!body.empty() && (body[0] == '{' || body[0] == '[')) out += ", \"result\": " + body;
    if (!ok) out += ", \"error\": " + json_string(why(a));
    out += "}";
  }
  out += "\n]}\n";
  std::cout << out;
  return all ? 0 : 1;
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int merge_ls(const std::vector<PodAnswer>& answers, bool wide) {
  std::vector<v1::MessageSummary> all;
  std::vector<std::string> pods;
  for (const auto& a : answers) {
    v1::ListMessagesResponse r;
    if (a.result.exit_code != 0 || !parse(a, &r)) continue;
    for (const auto& m : r.messages()) {
      all.push_back(m);
      pods.push_back(a.pod);
    }
  }
  const bool ok = report_missing(answers, [](const PodAnswer& a) { return a.result.exit_code == 0; });
  if (all.empty()) {
    std::cerr << "No messages in the queue of any pod that answered.\n";
  } else {
    std::cout << render_table(control::message_rows(all, wide, now_ms(), "POD", pods));
  }
  return ok ? 0 : 1;
}

int merge_show(const std::vector<PodAnswer>& answers, const std::string& id) {
  for (const auto& a : answers) {
    if (a.result.exit_code == 0) {
      std::cout << "Pod:      " << a.pod << "\n" << a.result.out;
      return 0;
    }
  }
  bool all_not_found = true;
  for (const auto& a : answers) {
    all_not_found = all_not_found && a.result.err.find("NOT_FOUND") != std::string::npos;
    if (a.result.err.find("NOT_FOUND") == std::string::npos) std::cerr << "kubectl-smtpd: pod " << a.pod << ": " << why(a) << "\n";
  }
  if (all_not_found) std::cerr << "kubectl-smtpd: " << id << ": NOT_FOUND on every pod\n";
  return 1;
}

int merge_action(const std::vector<PodAnswer>& answers, const std::vector<std::string>& ids) {
  std::vector<std::vector<std::string>> rows = {{"POD", "ID", "RESULT"}};
  std::set<std::string> done;
  bool ok = true;
  for (const auto& a : answers) {
    v1::ActionResponse r;
    if (!a.answered() || !parse(a, &r)) {
      std::cerr << "kubectl-smtpd: pod " << a.pod << ": " << why(a) << "\n";
      ok = false;
      continue;
    }
    for (const auto& id : r.ids()) {
      rows.push_back({a.pod, id, "ok"});
      done.insert(id);
    }
    for (const auto& f : r.failures()) {
      // Each message lives on one pod: NOT_FOUND elsewhere is expected.
      if (f.code() == 5 /* NOT_FOUND */ && !ids.empty()) continue;
      rows.push_back({a.pod, f.id(), "error: " + f.message()});
      ok = false;
    }
  }
  for (const auto& id : ids) {
    if (!done.count(id)) {
      rows.push_back({"-", id, "error: not found on any pod"});
      ok = false;
    }
  }
  std::cout << render_table(rows);
  return ok ? 0 : 1;
}

int merge_stats(const std::vector<PodAnswer>& answers) {
  std::vector<std::vector<std::string>> rows = {
      {"POD", "MESSAGES", "QUEUED", "DEFERRED", "HELD", "DELIVERING", "OLDEST", "IN FLIGHT"}};
  uint64_t total[6] = {0, 0, 0, 0, 0, 0};
  int64_t oldest = 0;
  bool any = false;
  auto get = [](const v1::QueueStats& s, const char* k) {
    auto it = s.messages_by_state().find(k);
    return it == s.messages_by_state().end() ? uint64_t{0} : it->second;
  };
  for (const auto& a : answers) {
    v1::QueueStats s;
    if (a.result.exit_code != 0 || !parse(a, &s)) {
      rows.push_back({a.pod, "?", "?", "?", "?", "?", "?", "?"});
      continue;
    }
    const uint64_t v[6] = {s.messages(), get(s, "queued"), get(s, "deferred"), get(s, "held"), get(s, "delivering"),
                           s.deliveries_in_flight()};
    for (int i = 0; i < 6; ++i) total[i] += v[i];
    if (s.messages()) oldest = std::max(oldest, s.oldest_age_seconds());
    any = any || s.messages() > 0;
    rows.push_back({a.pod, std::to_string(v[0]), std::to_string(v[1]), std::to_string(v[2]), std::to_string(v[3]),
                    std::to_string(v[4]), s.messages() ? control::human_age(s.oldest_age_seconds()) : "-",
                    std::to_string(v[5])});
  }
  rows.push_back({"TOTAL", std::to_string(total[0]), std::to_string(total[1]), std::to_string(total[2]),
                  std::to_string(total[3]), std::to_string(total[4]), any ? control::human_age(oldest) : "-",
                  std::to_string(total[5])});
  std::cout << render_table(rows);
  return report_missing(answers, [](const PodAnswer& a) { return a.result.exit_code == 0; }) ? 0 : 1;
}

int merge_policy(const std::vector<PodAnswer>& answers) {
  std::vector<std::vector<std::string>> rows = {{"POD", "VERSION", "UPDATED BY", "UPDATED"}};
  bool ok = true;
  for (const auto& a : answers) {
    v1::PolicySnapshot p;
    if (a.result.exit_code != 0 || !parse(a, &p)) {
      rows.push_back({a.pod, "error", why(a), ""});
      ok = false;
      continue;
    }
    rows.push_back({a.pod, std::to_string(p.version()), p.updated_by(),
                    p.updated_unix_ms() ? control::human_age((now_ms() - p.updated_unix_ms()) / 1000) + " ago" : "-"});
  }
  std::cout << render_table(rows);
  return ok ? 0 : 1;
}

int merge_health(const std::vector<PodAnswer>& answers) {
  std::vector<std::vector<std::string>> rows = {{"POD", "STATUS"}};
  bool ok = true;
  for (const auto& a : answers) {
    grpc::health::v1::HealthCheckResponse h;
    if (a.answered() && parse(a, &h)) {
      rows.push_back({a.pod, grpc::health::v1::HealthCheckResponse::ServingStatus_Name(h.status())});
      ok = ok && h.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    } else {
      rows.push_back({a.pod, why(a)});
      ok = false;
    }
  }
  std::cout << render_table(rows);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (const char* k = std::getenv("KUBECTL")) o.kubectl = k;
  CLI::App app{"kubectl smtpd: run an smtpctl command on every pod of an smtpd release and merge the answers"};
  app.prefix_command();  // everything from the command on belongs to smtpctl
  app.add_option("-n,--namespace", o.ns, "namespace (default: the context's)");
  app.add_option("-l,--selector", o.selector, "label selector of the pods");
  app.add_option("--context", o.context, "kubeconfig context");
  app.add_option("-c,--container", o.container, "container that has smtpctl");
  app.add_option("--smtpctl", o.smtpctl, "smtpctl's path inside the container");
  app.add_option("-o,--output", o.output, "table, wide or json")->check(CLI::IsMember({"table", "wide", "json"}));
  std::string token, timeout;
  app.add_option("--token", token, "passed to smtpctl (or SMTPCTL_TOKEN in the pod)");
  app.add_option("--timeout", timeout, "passed to smtpctl");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return e.get_exit_code() == 0 ? app.exit(e) : (std::cerr << "kubectl-smtpd: " << e.what() << "\n", 2);
  }
  if (!token.empty()) o.passthrough.insert(o.passthrough.end(), {"--token", token});
  if (!timeout.empty()) o.passthrough.insert(o.passthrough.end(), {"--timeout", timeout});
  std::vector<std::string> cmd = app.remaining();
  auto usage = [](const std::string& why) {
    std::cerr << "kubectl-smtpd: " << why
              << "\ncommands: queue ls [FILTERS], queue show ID, queue retry|hold|release|rm ID... | --all-matching "
                 "FILTERS, stats, policy get, policy set FILE, health\n";
    return 2;
  };
  if (cmd.empty()) return usage("a command is needed");
  const std::string c0 = cmd[0], c1 = cmd.size() > 1 ? cmd[1] : "";
  const bool ls = c0 == "queue" && c1 == "ls", show = c0 == "queue" && c1 == "show";
  const bool action = c0 == "queue" && (c1 == "retry" || c1 == "hold" || c1 == "release" || c1 == "rm");
  const bool stats = c0 == "stats", pget = c0 == "policy" && c1 == "get", pset = c0 == "policy" && c1 == "set";
  const bool health = c0 == "health";
  if (!(ls || show || action || stats || pget || pset || health)) {
    return usage("'" + c0 + (c1.empty() ? "" : " " + c1) + "' is not supported across pods; use kubectl exec POD -- smtpctl");
  }
  // policy set FILE: the file is read here and handed to each pod on stdin.
  std::string input;
  if (pset) {
    if (cmd.size() < 3) return usage("policy set needs a FILE");
    std::ifstream in(cmd[2], std::ios::binary);
    if (!in) return usage("cannot read '" + cmd[2] + "'");
    std::stringstream ss;
    ss << in.rdbuf();
    input = ss.str();
    cmd[2] = "-";
  }
  std::vector<std::string> ids;
  if (action) {
    for (size_t i = 2; i < cmd.size(); ++i) {
      if (cmd[i].rfind("-", 0) == 0) {
        if (cmd[i] != "--all-matching" && cmd[i] != "--bounce") ++i;  // a filter's value
        continue;
      }
      ids.push_back(cmd[i]);
    }
  }
  // The pods.
  std::vector<std::string> get = kubectl_base(o);
  get.insert(get.end(), {"get", "pods", "-l", o.selector, "-o",
                         "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}"});
  const Result listed = run(get, "");
  if (listed.exit_code != 0) {
    std::cerr << "kubectl-smtpd: kubectl get pods: " << trim(listed.err) << "\n";
    return 1;
  }
  std::vector<std::string> pods;
  std::istringstream names(listed.out);
  for (std::string n; std::getline(names, n);) {
    if (!trim(n).empty()) pods.push_back(trim(n));
  }
  if (pods.empty()) {
    std::cerr << "kubectl-smtpd: no pods match -l " << o.selector << "\n";
    return 1;
  }
  // Merged views need smtpctl's JSON; `show` keeps the caller's format.
  if (!show || o.output == "json") cmd.insert(cmd.end(), {"-o", "json"});
  else if (o.output == "wide") cmd.insert(cmd.end(), {"-o", "wide"});
  const auto answers = fan_out(o, pods, cmd, input);
  if (o.output == "json" && !show) return print_json(answers);
  if (ls) return merge_ls(answers, o.output == "wide");
  if (show) return merge_show(answers, cmd.size() > 2 ? cmd[2] : "");
  if (action) return merge_action(answers, ids);
  if (stats) return merge_stats(answers);
  if (pget || pset) return merge_policy(answers);
  return merge_health(answers);
}
