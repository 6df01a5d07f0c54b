// Clock and Random seams: injected everywhere, never read from globals.
// Implementations are thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>

namespace kmosix {

class Clock {
 public:
  using Duration = std::chrono::nanoseconds;
  using TimePoint = std::chrono::time_point<std::chrono::steady_clock, Duration>;
  virtual ~Clock() = default;
  // Monotonic time, for deadlines and durations.
  virtual TimePoint Now() const = 0;
  // Wall-clock time in milliseconds since the Unix epoch, for records shown to people.
  virtual int64_t WallMillis() const = 0;
  virtual void SleepFor(Duration d) = 0;
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override;
  int64_t WallMillis() const override;
  void SleepFor(Duration d) override;
};

class Random {
 public:
  virtual ~Random() = default;
  virtual uint64_t Next() = 0;
};

// Seeded from std::random_device; thread-safe.
class SystemRandom final : public Random {
 public:
  SystemRandom();
  uint64_t Next() override;

 private:
  std::mutex mu_;
  std::mt19937_64 engine_;
};

// A random identifier like "m-3f9a0c12d4e5b6a7" (prefix + 16 hex digits).
std::string RandomId(Random& random, const std::string& prefix);

// Seconds between two points, as a double.
inline double Seconds(Clock::Duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace kmosix
