// A dependency-free line plot written as a PNG (the machine has no
// matplotlib or ImageMagick): axes, grid, one coloured line per series, a
// legend, a title, in a built-in 3x5 pixel font (letters shown upper-case).
//
// Thread-safety: pure functions. Errors: kInvalid for no data, kFailed when
// the file cannot be written.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kmosix/status.h"

namespace kmosix::sim {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in this order
};

// The PNG bytes of an RGB image (width * height * 3 bytes, rows top down).
std::string EncodePng(int width, int height, const std::vector<uint8_t>& rgb);

Status WritePlot(const std::string& path, const std::string& title, const std::string& x_label,
                 const std::vector<Series>& series);

}  // namespace kmosix::sim
