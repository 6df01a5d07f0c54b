// `kmosixctl top`: a live view of the cluster after openMosix's mosmon. Every
// node's capacity-normalised load as a bar, its CPU (used/cores) and memory
// (used/total), ready/cordoned flags, and under it its workloads (cpu, memory,
// pinned, migrating where to); then the migrations in flight, the last few
// finished ones and the last few events.
//
// Split for testing: RenderTopFrame is a pure function of a TopModel (the
// API answers) and a TopView (size, clock); RunTop is the loop (fetch, draw,
// wait) over two seams, the ApiClient and a TopScreen. MakeTerminalScreen is
// the real screen: in a terminal it redraws in place (alternate screen, ANSI
// home + clear to end, cursor hidden), reads 'q' from stdin in raw mode, and
// restores the terminal on every exit (q, Ctrl-C, SIGTERM, errors); with
// --plain or when stdout is not a terminal it prints successive frames, each
// starting with a "=== kmosix top ..." header line. Width from TIOCGWINSZ
// (100 when not a terminal).
//
// Ownership: RunTop borrows everything. Thread-safety: RunTop runs on the
// calling thread; an EventFeed runs one thread of its own (Start/Stop from
// the owner's thread). Errors: RunTop returns an exit code (see client.h);
// a 401/403 stops it at once, other fetch errors are shown in the frame and
// it keeps the last good data.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "kmosix/clock.h"
#include "kmosixctl/client.h"

namespace kmosix::ctl {

struct TopModel {
  nlohmann::json nodes;                // GET /v1/nodes answer
  nlohmann::json workloads;            // GET /v1/workloads answer
  nlohmann::json migrations;           // GET /v1/migrations answer
  std::vector<nlohmann::json> events;  // event data objects, oldest first
  bool events_available = false;       // the event stream is connected
  std::string server;                  // who answered
  std::string error;                   // the last fetch failed ("" = fresh data)
  int64_t fetched_ms = 0;              // when the data was fetched
};

struct TopView {
  int64_t now_ms = 0;
  int width = 100;  // columns; lines are cut to it
  int height = 0;   // rows (0: no limit)
  double interval_seconds = 1;
  bool interactive = false;  // redrawn in place (title says "q quits")
  bool color = false;        // ANSI colours on bars and flags
  bool utc = false;
  int frame = 1;
};

// One frame: '\n'-terminated lines, none wider than view.width.
std::string RenderTopFrame(const TopModel& model, const TopView& view);

// ---- the loop and its seams -----------------------------------------------------

class TopScreen {
 public:
  enum class Wake { kTimeout, kRefresh, kQuit, kInterrupt, kTerminate, kResize };
  virtual ~TopScreen() = default;
  virtual bool Interactive() const = 0;
  virtual bool Color() const = 0;
  virtual int Width() = 0;
  virtual int Height() = 0;  // 0: no limit
  virtual void Begin() = 0;  // take over the terminal (idempotent)
  virtual void Draw(const std::string& frame) = 0;
  // Waits up to `timeout` for a key, a signal or a resize.
  virtual Wake Wait(std::chrono::milliseconds timeout) = 0;
  virtual void End() = 0;  // give the terminal back (idempotent)
};

// Recent events for the frame (the live event stream).
class EventSource {
 public:
  virtual ~EventSource() = default;
  virtual std::vector<nlohmann::json> Recent(size_t n) = 0;
  virtual bool Available() = 0;
};

struct TopOptions {
  double interval_seconds = 1;
  int iterations = 0;  // stop after this many frames (0: until q / a signal)
  bool utc = false;
};

// Fetches the three lists into model (keeps the old data on failure, sets
// model.error); returns the failure's exit code (0 on success).
int FetchTopModel(ApiClient& client, Clock& clock, TopModel& model);

// The loop. Returns 0 after --iterations frames or 'q'/Ctrl-C (or the last
// fetch's exit code when it failed), 143 on SIGTERM, or the exit code of an
// authentication/authorization failure.
int RunTop(ApiClient& client, TopScreen& screen, Clock& clock, const TopOptions& options,
           EventSource* events, std::ostream& err);

// The real screen on stdin/stdout. Blocks SIGINT, SIGTERM and SIGWINCH in the
// calling thread (threads started later inherit it) and reads them from a
// signalfd; the destructor restores the signal mask and the terminal.
std::unique_ptr<TopScreen> MakeTerminalScreen(bool plain);

// Follows GET /v1/events on a thread of its own (reconnecting with
// Last-Event-ID), keeping the last `keep` events.
class EventFeed final : public EventSource {
 public:
  EventFeed(HttpTransport& transport, std::vector<std::string> servers, size_t keep = 50);
  ~EventFeed() override;
  void Start();
  void Stop();  // cancels the stream and joins
  std::vector<nlohmann::json> Recent(size_t n) override;
  bool Available() override;

 private:
  void Run();

  HttpTransport& transport_;
  std::vector<std::string> servers_;
  const size_t keep_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<nlohmann::json> events_;
  bool connected_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace kmosix::ctl
