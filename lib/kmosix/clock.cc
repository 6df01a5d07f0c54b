#include "kmosix/clock.h"

#include <cstdio>
#include <thread>

namespace kmosix {

Clock::TimePoint SystemClock::Now() const {
  return std::chrono::time_point_cast<Duration>(std::chrono::steady_clock::now());
}

int64_t SystemClock::WallMillis() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void SystemClock::SleepFor(Duration d) { std::this_thread::sleep_for(d); }

SystemRandom::SystemRandom() : engine_(std::random_device{}()) {}

uint64_t SystemRandom::Next() {
  std::lock_guard lock(mu_);
  return engine_();
}

std::string RandomId(Random& random, const std::string& prefix) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(random.Next()));
  return prefix + buf;
}

}  // namespace kmosix
