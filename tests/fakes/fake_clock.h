// Manual Clock for unit tests: time moves only when told (SleepFor advances it).
#pragma once

#include <atomic>

#include "kmosix/clock.h"

namespace kmosix::testing {

class FakeClock : public Clock {
 public:
  TimePoint Now() const override { return TimePoint(Duration(now_ns_.load())); }
  int64_t WallMillis() const override { return 1'700'000'000'000 + now_ns_.load() / 1'000'000; }
  void SleepFor(Duration d) override { Advance(d); }
  void Advance(Duration d) { now_ns_ += d.count(); }

 private:
  std::atomic<int64_t> now_ns_{1'000'000'000};
};

}  // namespace kmosix::testing
