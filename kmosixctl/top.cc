#include "kmosixctl/top.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <ostream>

#include "kmosixctl/render.h"
#include "kmosixctl/sse.h"

namespace kmosix::ctl {
namespace {

using nlohmann::json;

constexpr const char* kReset = "\x1b[0m";
constexpr const char* kRed = "\x1b[31m";
constexpr const char* kGreen = "\x1b[32m";
constexpr const char* kYellow = "\x1b[33m";
constexpr const char* kBold = "\x1b[1m";

bool IsFinalPhase(const std::string& phase) {
  return phase == "Succeeded" || phase == "RolledBack" || phase == "Failed";
}

// Cuts a line to `width` visible characters; ANSI escape sequences do not
// count (a reset is appended when the line had any).
std::string TruncateVisible(const std::string& line, int width) {
  std::string out;
  int visible = 0;
  bool escapes = false;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\x1b' && i + 1 < line.size() && line[i + 1] == '[') {
      size_t j = i + 2;
      while (j < line.size() && !(line[j] >= 0x40 && line[j] <= 0x7e)) ++j;
      out.append(line, i, j + 1 - i);
      i = j;
      escapes = true;
      continue;
    }
    if (visible >= width) {
      if (escapes) out += kReset;
      return out;
    }
    out += line[i];
    ++visible;
  }
  return out;
}

std::string Colour(const std::string& text, const char* colour, bool on) {
  return on ? std::string(colour) + text + kReset : text;
}

// Replaces the first `plain` in `line` by `coloured`.
void Recolour(std::string& line, const std::string& plain, const std::string& coloured) {
  if (plain.empty() || plain == coloured) return;
  if (auto at = line.find(plain); at != std::string::npos) line.replace(at, plain.size(), coloured);
}

const char* LoadColour(double load) { return load >= 1.0 ? kRed : load >= 0.7 ? kYellow : kGreen; }

// The bar with its filled part coloured.
std::string ColourBar(const std::string& bar, double load) {
  const size_t first = bar.find_first_of("#+");
  if (first == std::string::npos) return bar;
  const size_t last = bar.find_last_of("#+");
  return bar.substr(0, first) + LoadColour(load) + bar.substr(first, last - first + 1) + kReset +
         bar.substr(last + 1);
}

std::string CenteredBar(const std::string& text, int width) {
  if (width < 3) return "";
  const int inner = width - 2;
  std::string t = text.substr(0, static_cast<size_t>(inner));
  const int left = (inner - static_cast<int>(t.size())) / 2;
  return "[" + std::string(left, ' ') + t +
         std::string(inner - left - static_cast<int>(t.size()), ' ') + "]";
}

struct NodeLine {
  std::string name, load, cpu, mem, flags;
  double load_value = 0;
  bool ready = false;
};

std::string WorkloadFlags(const json& w, const std::map<std::string, const json*>& migrations) {
  const json& spec = JObj(w, "spec");
  const json& st = JObj(w, "status");
  std::vector<std::string> flags;
  if (JBool(spec, "pinned")) flags.push_back("pinned");
  if (!JBool(spec, "migratable", true)) flags.push_back("no-migrate");
  const std::string mid = JStr(st, "migration");
  if (!mid.empty()) {
    auto it = migrations.find(mid);
    if (it != migrations.end()) {
      flags.push_back("migrating -> " + JStr(*it->second, "target") + " (" +
                      JStr(*it->second, "phase") + ")");
    } else {
      flags.push_back("migrating");
    }
  }
  std::string out;
  for (size_t i = 0; i < flags.size(); ++i) out += (i ? ", " : "") + flags[i];
  return out;
}

std::vector<std::string> WorkloadCells(const json& w,
                                       const std::map<std::string, const json*>& migrations) {
  const json& spec = JObj(w, "spec");
  const json& st = JObj(w, "status");
  const json& usage = JObj(w, "usage");
  std::string name = JStr(w, "name");
  if (name.empty()) name = JStr(spec, "name");
  std::string cpu = "cpu -", mem = "mem -";
  if (usage.is_object()) {
    cpu = "cpu " + FormatCores(JNum(usage, "cpu"));
    mem = "mem " + FormatBytes(JNum(usage, "memoryBytes"));
  }
  std::string flags = WorkloadFlags(w, migrations);
  const std::string phase = JStr(st, "phase");
  if (phase != "Running" && phase != "Migrating" && !JStr(st, "message").empty()) {
    flags += (flags.empty() ? "" : ", ") + JStr(st, "message");
  }
  return {"  " + name, phase.empty() ? "-" : phase, cpu, mem, flags};
}

}  // namespace

// ---- the frame ------------------------------------------------------------------

std::string RenderTopFrame(const TopModel& m, const TopView& v) {
  const int width = std::max(v.width, 40);
  const RenderOptions ro{.now_ms = v.now_ms, .utc = v.utc};
  std::vector<std::string> lines;

  const json& nodes = Items(m.nodes);
  const json& workloads = Items(m.workloads);
  const json& migrations = Items(m.migrations);
  std::map<std::string, const json*> migration_by_id;
  for (const auto& mg : migrations) migration_by_id[JStr(mg, "id")] = &mg;

  // Header and summary.
  const std::string clock = FormatClock(v.now_ms, v.utc);
  const std::string server = m.server.empty() ? "" : "  " + m.server;
  char every[32];
  std::snprintf(every, sizeof every, "%g", v.interval_seconds);
  if (v.interactive) {
    lines.push_back(Colour("kmosix top", kBold, v.color) + "  " + clock + "  every " + every +
                    "s, q quits" + server);
  } else {
    lines.push_back("=== kmosix top  " + clock + "  frame " + std::to_string(v.frame) + server +
                    " ===");
  }
  if (!m.error.empty()) {
    std::string e = "! " + m.error;
    if (m.fetched_ms > 0) {
      e += " (data from " + FormatAge((v.now_ms - m.fetched_ms) / 1000.0) + " ago)";
    }
    lines.push_back(Colour(e, kRed, v.color));
  }
  size_t ready = 0, cordoned = 0;
  double load_sum = 0;
  for (const auto& n : nodes) {
    if (JBool(n, "ready")) {
      ++ready;
      load_sum += JNum(n, "load");
    }
    if (JBool(n, "cordoned")) ++cordoned;
  }
  std::map<std::string, size_t> phases;
  for (const auto& w : workloads) ++phases[JStr(JObj(w, "status"), "phase")];
  size_t in_flight = 0;
  for (const auto& mg : migrations) {
    if (!IsFinalPhase(JStr(mg, "phase"))) ++in_flight;
  }
  std::string summary = "nodes: " + std::to_string(nodes.size()) + " (" + std::to_string(ready) +
                        " ready, " + std::to_string(cordoned) + " cordoned)";
  if (ready > 0) {
    char avg[32];
    std::snprintf(avg, sizeof avg, "%.2f", load_sum / static_cast<double>(ready));
    summary += ", avg load " + std::string(avg);
  }
  summary += "   migrations in flight: " + std::to_string(in_flight);
  lines.push_back(summary);
  // Phases in their life order, then any other.
  std::string parts;
  for (const char* p :
       {"Running", "Migrating", "Scheduled", "Pending", "Lost", "Failed", "Exited"}) {
    auto it = phases.find(p);
    if (it == phases.end()) continue;
    parts += (parts.empty() ? "" : ", ") + std::to_string(it->second) + " " + it->first;
    phases.erase(it);
  }
  for (const auto& [phase, count] : phases) {
    parts += (parts.empty() ? "" : ", ") + std::to_string(count) + " " +
             (phase.empty() ? std::string("?") : phase);
  }
  summary = "workloads: " + std::to_string(workloads.size()) +
            (parts.empty() ? std::string() : " (" + parts + ")");
  lines.push_back(summary);
  lines.push_back("");

  // Nodes, each with its workloads.
  std::map<std::string, std::vector<const json*>> by_node;
  std::vector<const json*> unplaced;
  std::map<std::string, bool> known;
  for (const auto& n : nodes) known[JStr(n, "name")] = true;
  for (const auto& w : workloads) {
    const std::string node = JStr(JObj(w, "status"), "node");
    if (!node.empty() && known.count(node)) {
      by_node[node].push_back(&w);
    } else {
      unplaced.push_back(&w);
    }
  }
  std::vector<NodeLine> node_lines;
  double max_load = 1.0;
  for (const auto& n : nodes) {
    NodeLine l;
    l.name = JStr(n, "name");
    l.ready = JBool(n, "ready");
    std::vector<std::string> flags;
    if (l.ready) {
      const json& cap = JObj(n, "capacity");
      l.load_value = JNum(n, "load");
      max_load = std::max(max_load, l.load_value);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.2f", l.load_value);
      l.load = buf;
      l.cpu = FormatCores(JNum(n, "cpuUsed")) + "/" + FormatCores(JNum(cap, "cpus")) + " cores";
      const double total = JNum(cap, "memoryBytes");
      l.mem = total > 0
                  ? FormatUsedTotal(std::max(0.0, total - JNum(n, "memoryAvailableBytes")), total)
                  : "-";
      flags.push_back("ready");
    } else {
      l.load = "-";
      l.cpu = "-";
      l.mem = "-";
      std::string nr = "NOTREADY";
      if (n.is_object() && n.contains("notReadySeconds"))
        nr += " " + FormatAge(JNum(n, "notReadySeconds"));
      if (n.is_object() && n.contains("notReadyReason"))
        nr += " (unfit: kmosixctl node " + l.name + ")";
      flags.push_back(nr);
    }
    if (JBool(n, "cordoned")) flags.push_back("cordoned");
    for (size_t i = 0; i < flags.size(); ++i) l.flags += (i ? "," : "") + flags[i];
    node_lines.push_back(l);
  }
  const double scale = std::ceil(max_load * 2) / 2;
  size_t name_w = 4, load_w = 4, cpu_w = 3, mem_w = 6, flags_w = 5;
  for (const auto& l : node_lines) {
    name_w = std::max(name_w, l.name.size());
    load_w = std::max(load_w, l.load.size());
    cpu_w = std::max(cpu_w, l.cpu.size());
    mem_w = std::max(mem_w, l.mem.size());
    flags_w = std::max(flags_w, l.flags.size());
  }
  const int fixed = static_cast<int>(name_w + load_w + cpu_w + mem_w + flags_w) + 2 * 5;
  const int bar_w = std::clamp(width - fixed, 12, 60);
  Table nt;
  nt.header = {"NODE", "LOAD" + std::string(bar_w - 4, ' '), "", "CPU", "MEMORY", "FLAGS"};
  nt.right = {false, false, true, true, true, false};
  std::vector<std::string> bars;
  for (const auto& l : node_lines) {
    std::string bar =
        l.ready ? LoadBar(l.load_value, scale, bar_w) : CenteredBar("NotReady", bar_w);
    bars.push_back(bar);
    nt.rows.push_back({l.name, bar, l.load, l.cpu, l.mem, l.flags});
  }
  std::vector<std::string> node_rows = AlignRows(nt, true);
  // The workloads' columns are aligned across all nodes.
  Table wt;
  std::vector<std::string> workload_node;
  for (const auto& l : node_lines) {
    for (const json* w : by_node[l.name]) {
      wt.rows.push_back(WorkloadCells(*w, migration_by_id));
      workload_node.push_back(l.name);
    }
  }
  std::vector<std::string> workload_rows = AlignRows(wt, false);
  if (node_lines.empty()) {
    lines.push_back("No nodes.");
  } else {
    lines.push_back(node_rows[0]);
    size_t wi = 0;
    for (size_t i = 0; i < node_lines.size(); ++i) {
      std::string row = node_rows[i + 1];
      if (v.color) {
        const NodeLine& l = node_lines[i];
        if (l.ready) Recolour(row, bars[i], ColourBar(bars[i], l.load_value));
        if (!l.ready) Recolour(row, "NOTREADY", Colour("NOTREADY", kRed, true));
        if (l.flags.find("cordoned") != std::string::npos)
          Recolour(row, "cordoned", Colour("cordoned", kYellow, true));
      }
      lines.push_back(row);
      while (wi < workload_rows.size() && workload_node[wi] == node_lines[i].name) {
        lines.push_back(workload_rows[wi++]);
      }
    }
  }
  if (scale > 1) {
    char buf[96];
    std::snprintf(buf, sizeof buf,
                  "(bars span load 0..%.1f; '|' marks 1.0, a full node; '+' is beyond it)", scale);
    lines.push_back(buf);
  }

  if (!unplaced.empty()) {
    lines.push_back("");
    lines.push_back("NOT ON A NODE");
    Table ut;
    for (const json* w : unplaced) ut.rows.push_back(WorkloadCells(*w, migration_by_id));
    for (auto& l : AlignRows(ut, false)) lines.push_back(l);
  }

  // Migrations in flight.
  lines.push_back("");
  Table ft;
  ft.header = {"IN FLIGHT", "WORKLOAD", "ROUTE", "PHASE", "AGE"};
  ft.right = {false, false, false, false, true};
  for (const auto& mg : migrations) {
    const std::string phase = JStr(mg, "phase");
    if (IsFinalPhase(phase)) continue;
    std::string shown = phase;
    if (JNum(mg, "cancelRequestedMs") > 0) shown += " (cancelling)";
    const double created = JNum(mg, "createdMs");
    ft.rows.push_back({JStr(mg, "id"), JStr(mg, "workload"),
                       JStr(mg, "source") + "->" + JStr(mg, "target"), shown,
                       created > 0 ? FormatAge((v.now_ms - created) / 1000.0) : "-"});
  }
  if (ft.rows.empty()) {
    lines.push_back("IN FLIGHT: none");
  } else {
    for (auto& l : AlignRows(ft, true)) lines.push_back(l);
  }

  // The last few finished migrations, newest first.
  std::vector<const json*> done;
  for (const auto& mg : migrations) {
    if (IsFinalPhase(JStr(mg, "phase"))) done.push_back(&mg);
  }
  std::stable_sort(done.begin(), done.end(), [](const json* a, const json* b) {
    auto t = [](const json* x) {
      const double f = JNum(*x, "finishedMs");
      return f > 0 ? f : JNum(*x, "updatedMs");
    };
    return t(a) > t(b);
  });
  if (!done.empty()) {
    lines.push_back("");
    Table rt;
    rt.header = {"RECENT", "MIGRATION", "WORKLOAD", "ROUTE", "OUTCOME", "DOWNTIME", "NOTE"};
    for (size_t i = 0; i < done.size() && i < 3; ++i) {
      const json& mg = *done[i];
      const double f = JNum(mg, "finishedMs") > 0 ? JNum(mg, "finishedMs") : JNum(mg, "updatedMs");
      const json& t = JObj(JObj(mg, "report"), "timings");
      const std::string downtime =
          JNum(t, "downtime") > 0 ? FormatDuration(JNum(t, "downtime")) : "-";
      rt.rows.push_back({f > 0 ? FormatClock(static_cast<int64_t>(f), v.utc) : "-", JStr(mg, "id"),
                         JStr(mg, "workload"), JStr(mg, "source") + "->" + JStr(mg, "target"),
                         JStr(mg, "phase"), downtime, JStr(mg, "error")});
    }
    for (auto& l : AlignRows(rt, true)) lines.push_back(l);
  }

  // The last few events.
  if (m.events_available || !m.events.empty()) {
    lines.push_back("");
    lines.push_back("EVENTS");
    if (m.events.empty()) lines.push_back("  (none yet)");
    const size_t from = m.events.size() > 5 ? m.events.size() - 5 : 0;
    for (size_t i = from; i < m.events.size(); ++i) {
      lines.push_back("  " + FormatEventLine(m.events[i], ro));
    }
  }

  // Fit the screen.
  if (v.height > 0 && static_cast<int>(lines.size()) > v.height) {
    const size_t keep = static_cast<size_t>(std::max(1, v.height - 1));
    const size_t cut = lines.size() - keep;
    lines.resize(keep);
    lines.push_back("... " + std::to_string(cut) + " more lines (enlarge the window)");
  }
  std::string out;
  for (const auto& l : lines) out += TruncateVisible(l, width) + "\n";
  return out;
}

// ---- fetching and the loop ---------------------------------------------------------

namespace {

std::optional<ApiError> Fetch(ApiClient& client, Clock& clock, TopModel& model) {
  auto nodes = client.Get("/v1/nodes");
  if (!nodes.ok()) return nodes.error();
  auto workloads = client.Get("/v1/workloads");
  if (!workloads.ok()) return workloads.error();
  auto migrations = client.Get("/v1/migrations");
  if (!migrations.ok()) return migrations.error();
  model.nodes = *nodes;
  model.workloads = *workloads;
  model.migrations = *migrations;
  model.server = client.CurrentServer();
  model.error.clear();
  model.fetched_ms = clock.WallMillis();
  return std::nullopt;
}

std::string OneLine(const ApiError& e) {
  std::string s = e.code.empty() ? std::string("Error") : e.code;
  if (e.http_status > 0) s += " (HTTP " + std::to_string(e.http_status) + ")";
  return s + ": " + e.message;
}

}  // namespace

int FetchTopModel(ApiClient& client, Clock& clock, TopModel& model) {
  auto e = Fetch(client, clock, model);
  if (!e) return kExitOk;
  model.error = OneLine(*e);
  return e->exit_code;
}

int RunTop(ApiClient& client, TopScreen& screen, Clock& clock, const TopOptions& options,
           EventSource* events, std::ostream& err) {
  const auto interval = std::chrono::duration_cast<Clock::Duration>(
      std::chrono::duration<double>(std::max(0.1, options.interval_seconds)));
  TopModel model;
  int frame = 0;
  int last_code = kExitOk;
  screen.Begin();
  auto draw = [&] {
    TopView view;
    view.now_ms = clock.WallMillis();
    view.width = screen.Width();
    view.height = screen.Height();
    view.interval_seconds = options.interval_seconds;
    view.interactive = screen.Interactive();
    view.color = screen.Color();
    view.utc = options.utc;
    view.frame = frame;
    if (events != nullptr) {
      model.events = events->Recent(5);
      model.events_available = events->Available();
    }
    screen.Draw(RenderTopFrame(model, view));
  };
  while (true) {
    const auto start = clock.Now();
    auto error = Fetch(client, clock, model);
    last_code = error ? error->exit_code : kExitOk;
    if (error) model.error = OneLine(*error);
    if (error && error->exit_code == kExitAuth) {
      screen.End();
      err << "kmosixctl: " << error->ToString() << "\n";
      return kExitAuth;
    }
    ++frame;
    draw();
    if (options.iterations > 0 && frame >= options.iterations) break;
    bool refresh = false;
    while (!refresh) {
      const auto left = start + interval - clock.Now();
      if (left <= Clock::Duration::zero()) break;
      const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left);
      switch (screen.Wait(ms)) {
        case TopScreen::Wake::kTimeout:
        case TopScreen::Wake::kRefresh:
          refresh = true;
          break;
        case TopScreen::Wake::kResize:
          draw();
          break;
        case TopScreen::Wake::kQuit:
        case TopScreen::Wake::kInterrupt:
          screen.End();
          return kExitOk;
        case TopScreen::Wake::kTerminate:
          screen.End();
          return 128 + SIGTERM;
      }
    }
  }
  screen.End();
  if (last_code != kExitOk) err << "kmosixctl: " << model.error << "\n";
  return last_code;
}

// ---- the terminal ------------------------------------------------------------------

namespace {

// False when stdout is gone (a closed pipe).
bool WriteAll(const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(STDOUT_FILENO, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

class TerminalScreen final : public TopScreen {
 public:
  explicit TerminalScreen(bool plain) {
    interactive_ = !plain && ::isatty(STDOUT_FILENO) == 1;
    keys_ = interactive_ && ::isatty(STDIN_FILENO) == 1;
    const char* term = std::getenv("TERM");
    color_ = interactive_ && std::getenv("NO_COLOR") == nullptr &&
             !(term != nullptr && std::string(term) == "dumb");
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGWINCH);
    pthread_sigmask(SIG_BLOCK, &set, &old_mask_);
    sigfd_ = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  }

  ~TerminalScreen() override {
    End();
    if (sigfd_ >= 0) ::close(sigfd_);
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }

  bool Interactive() const override { return interactive_; }
  bool Color() const override { return color_; }

  int Width() override {
    struct winsize ws {};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 100;
  }

  int Height() override {
    if (!interactive_) return 0;
    struct winsize ws {};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 1) return ws.ws_row - 1;
    return 0;
  }

  void Begin() override {
    if (began_) return;
    began_ = true;
    if (keys_ && ::tcgetattr(STDIN_FILENO, &saved_) == 0) {
      struct termios raw = saved_;
      raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
      raw.c_cc[VMIN] = 0;
      raw.c_cc[VTIME] = 0;
      raw_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    // Alternate screen, cursor hidden.
    if (interactive_) WriteAll("\x1b[?1049h\x1b[?25l");
  }

  void Draw(const std::string& frame) override {
    if (!interactive_) {
      if (!WriteAll(frame + "\n")) closed_ = true;
      return;
    }
    // Home, each line cleared to its end, then the rest of the screen.
    std::string out = "\x1b[H";
    size_t start = 0;
    while (start < frame.size()) {
      size_t nl = frame.find('\n', start);
      if (nl == std::string::npos) nl = frame.size();
      out.append(frame, start, nl - start);
      out += "\x1b[K\n";
      start = nl + 1;
    }
    out += "\x1b[J";
    if (!WriteAll(out)) closed_ = true;
  }

  Wake Wait(std::chrono::milliseconds timeout) override {
    if (closed_) return Wake::kQuit;  // nobody reads the frames any more
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return Wake::kTimeout;
      struct pollfd fds[2];
      nfds_t n = 0;
      if (sigfd_ >= 0) fds[n++] = {sigfd_, POLLIN, 0};
      const bool keys = raw_;
      if (keys) fds[n++] = {STDIN_FILENO, POLLIN, 0};
      const int r = ::poll(fds, n, static_cast<int>(left.count()));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return r == 0 ? Wake::kTimeout : Wake::kTimeout;
      for (nfds_t i = 0; i < n; ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        if (fds[i].fd == sigfd_) {
          struct signalfd_siginfo si {};
          if (::read(sigfd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
            if (si.ssi_signo == SIGINT) return Wake::kInterrupt;
            if (si.ssi_signo == SIGTERM) return Wake::kTerminate;
            if (si.ssi_signo == SIGWINCH) return Wake::kResize;
          }
        } else {
          char buf[64];
          const ssize_t got = ::read(STDIN_FILENO, buf, sizeof buf);
          if (got <= 0) {
            raw_ = false;  // stdin closed: stop watching it
            continue;
          }
          for (ssize_t k = 0; k < got; ++k) {
            if (buf[k] == 'q' || buf[k] == 'Q') return Wake::kQuit;
            if (buf[k] == ' ' || buf[k] == 'r') return Wake::kRefresh;
          }
        }
      }
    }
  }

  void End() override {
    if (!began_) return;
    began_ = false;
    if (keys_ && raw_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    raw_ = false;
    if (interactive_) WriteAll("\x1b[?25h\x1b[?1049l");
  }

 private:
  bool interactive_ = false;
  bool keys_ = false;
  bool color_ = false;
  bool began_ = false;
  bool raw_ = false;
  bool closed_ = false;
  struct termios saved_ {};
  sigset_t old_mask_{};
  int sigfd_ = -1;
};

}  // namespace

std::unique_ptr<TopScreen> MakeTerminalScreen(bool plain) {
  return std::make_unique<TerminalScreen>(plain);
}

// ---- the event feed ------------------------------------------------------------------

EventFeed::EventFeed(HttpTransport& transport, std::vector<std::string> servers, size_t keep)
    : transport_(transport), servers_(std::move(servers)), keep_(keep == 0 ? 1 : keep) {}

EventFeed::~EventFeed() { Stop(); }

void EventFeed::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

void EventFeed::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  transport_.CancelStreams();
  if (thread_.joinable()) thread_.join();
}

std::vector<json> EventFeed::Recent(size_t n) {
  std::lock_guard lock(mu_);
  const size_t from = events_.size() > n ? events_.size() - n : 0;
  return std::vector<json>(events_.begin() + static_cast<std::ptrdiff_t>(from), events_.end());
}

bool EventFeed::Available() {
  std::lock_guard lock(mu_);
  return connected_;
}

void EventFeed::Run() {
  ApiClient client(transport_, servers_);
  std::string last_id;
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    std::vector<std::pair<std::string, std::string>> headers;
    if (!last_id.empty()) headers.push_back({"Last-Event-ID", last_id});
    SseParser parser;
    {
      std::lock_guard lock(mu_);
      connected_ = true;  // until the stream fails
    }
    // The first time from the start of the server's ring (recent history),
    // then from the last event seen.
    auto error = client.Stream("/v1/events?since=0", headers, [&](std::string_view chunk) {
      for (const SseEvent& e : parser.Feed(chunk)) {
        json data = json::parse(e.data, nullptr, /*allow_exceptions=*/false);
        if (data.is_discarded() || !data.is_object()) continue;
        std::lock_guard lock(mu_);
        events_.push_back(std::move(data));
        while (events_.size() > keep_) events_.pop_front();
      }
      if (!parser.LastEventId().empty()) last_id = parser.LastEventId();
      std::lock_guard lock(mu_);
      return !stop_;
    });
    std::unique_lock lock(mu_);
    connected_ = false;
    // No such endpoint or no right to it: nothing to follow.
    if (error && (error->exit_code == kExitNotFound || error->exit_code == kExitAuth)) return;
    cv_.wait_for(lock, std::chrono::seconds(2), [&] { return stop_; });
    if (stop_) return;
  }
}

}  // namespace kmosix::ctl
