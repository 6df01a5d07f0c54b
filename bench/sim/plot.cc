// See plot.h. The PNG holds one IDAT of stored (uncompressed) deflate blocks:
// a plot is small, and it needs no zlib.
#include "bench/sim/plot.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>

namespace kmosix::sim {
namespace {

uint32_t Crc32(const std::string& data, size_t from) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffu;
  for (size_t i = from; i < data.size(); ++i)
    c = table[(c ^ static_cast<uint8_t>(data[i])) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

void Be32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xff));
}

void Chunk(std::string& out, const char* type, const std::string& body) {
  Be32(out, static_cast<uint32_t>(body.size()));
  const size_t start = out.size();
  out.append(type, 4);
  out += body;
  Be32(out, Crc32(out, start));
}

// 3x5 glyphs, rows top down, 3 bits each (4 = left column).
struct Glyph {
  char c;
  uint8_t rows[5];
};
constexpr Glyph kFont[] = {
    {'0', {7, 5, 5, 5, 7}}, {'1', {2, 6, 2, 2, 7}}, {'2', {7, 1, 7, 4, 7}}, {'3', {7, 1, 7, 1, 7}},
    {'4', {5, 5, 7, 1, 1}}, {'5', {7, 4, 7, 1, 7}}, {'6', {7, 4, 7, 5, 7}}, {'7', {7, 1, 1, 1, 1}},
    {'8', {7, 5, 7, 5, 7}}, {'9', {7, 5, 7, 1, 7}}, {'.', {0, 0, 0, 0, 2}}, {',', {0, 0, 0, 2, 4}},
    {'-', {0, 0, 7, 0, 0}}, {'%', {5, 1, 2, 4, 5}}, {'(', {2, 4, 4, 4, 2}}, {')', {2, 1, 1, 1, 2}},
    {'=', {0, 7, 0, 7, 0}}, {':', {0, 2, 0, 2, 0}}, {'A', {2, 5, 7, 5, 5}}, {'B', {6, 5, 6, 5, 6}},
    {'C', {3, 4, 4, 4, 3}}, {'D', {6, 5, 5, 5, 6}}, {'E', {7, 4, 6, 4, 7}}, {'F', {7, 4, 6, 4, 4}},
    {'G', {3, 4, 5, 5, 3}}, {'H', {5, 5, 7, 5, 5}}, {'I', {7, 2, 2, 2, 7}}, {'J', {1, 1, 1, 5, 2}},
    {'K', {5, 5, 6, 5, 5}}, {'L', {4, 4, 4, 4, 7}}, {'M', {5, 7, 7, 5, 5}}, {'N', {6, 5, 5, 5, 5}},
    {'O', {2, 5, 5, 5, 2}}, {'P', {6, 5, 6, 4, 4}}, {'Q', {2, 5, 5, 6, 3}}, {'R', {6, 5, 6, 5, 5}},
    {'S', {3, 4, 2, 1, 6}}, {'T', {7, 2, 2, 2, 2}}, {'U', {5, 5, 5, 5, 7}}, {'V', {5, 5, 5, 5, 2}},
    {'W', {5, 5, 7, 7, 5}}, {'X', {5, 5, 2, 5, 5}}, {'Y', {5, 5, 2, 2, 2}}, {'Z', {7, 1, 2, 4, 7}},
};

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int width, int height) : w(width), h(height), px(static_cast<size_t>(w * h * 3), 255) {}
  void Set(int x, int y, uint32_t rgb) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    const size_t i = static_cast<size_t>((y * w + x) * 3);
    px[i] = static_cast<uint8_t>(rgb >> 16);
    px[i + 1] = static_cast<uint8_t>(rgb >> 8);
    px[i + 2] = static_cast<uint8_t>(rgb);
  }
  void Rect(int x0, int y0, int x1, int y1, uint32_t rgb) {
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) Set(x, y, rgb);
  }
  void Line(double x0, double y0, double x1, double y1, uint32_t rgb, int thick) {
    const int steps = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
    for (int s = 0; s <= steps; ++s) {
      const double f = static_cast<double>(s) / steps;
      const int x = static_cast<int>(std::lround(x0 + (x1 - x0) * f));
      const int y = static_cast<int>(std::lround(y0 + (y1 - y0) * f));
      Rect(x - thick / 2, y - thick / 2, x + (thick - 1) / 2, y + (thick - 1) / 2, rgb);
    }
  }
  // Text at (x, y) top-left, each font pixel scale x scale.
  void Text(int x, int y, const std::string& s, int scale, uint32_t rgb) {
    for (char ch : s) {
      const char up = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      for (const Glyph& g : kFont) {
        if (g.c != up) continue;
        for (int r = 0; r < 5; ++r)
          for (int c = 0; c < 3; ++c)
            if (g.rows[r] & (4 >> c))
              Rect(x + c * scale, y + r * scale, x + (c + 1) * scale - 1, y + (r + 1) * scale - 1,
                   rgb);
      }
      x += 4 * scale;
    }
  }
};

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, std::abs(v - std::round(v)) < 1e-9 ? "%.0f" : "%.2f", v);
  return buf;
}

}  // namespace

std::string EncodePng(int width, int height, const std::vector<uint8_t>& rgb) {
  std::string out("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  Be32(ihdr, static_cast<uint32_t>(width));
  Be32(ihdr, static_cast<uint32_t>(height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, no interlace
  Chunk(out, "IHDR", ihdr);
  std::string raw;
  const size_t row = static_cast<size_t>(width) * 3;
  raw.reserve((row + 1) * static_cast<size_t>(height));
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);  // filter: none
    raw.append(reinterpret_cast<const char*>(rgb.data()) + static_cast<size_t>(y) * row, row);
  }
  std::string z("\x78\x01", 2);
  for (size_t at = 0; at < raw.size() || at == 0;) {
    const size_t n = std::min<size_t>(65535, raw.size() - at);
    const bool last = at + n >= raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(static_cast<char>(n & 0xff));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xff));
    z.push_back(static_cast<char>((~n >> 8) & 0xff));
    z.append(raw, at, n);
    at += n;
    if (last) break;
  }
  uint32_t a = 1, b = 0;  // adler32
  for (char ch : raw) {
    a = (a + static_cast<uint8_t>(ch)) % 65521;
    b = (b + a) % 65521;
  }
  Be32(z, (b << 16) | a);
  Chunk(out, "IDAT", z);
  Chunk(out, "IEND", "");
  return out;
}

Status WritePlot(const std::string& path, const std::string& title, const std::string& x_label,
                 const std::vector<Series>& series) {
  double x0 = 1e300, x1 = -1e300, y1 = 0;
  for (const Series& s : series)
    for (const auto& [x, y] : s.points) {
      x0 = std::min(x0, x);
      x1 = std::max(x1, x);
      if (std::isfinite(y)) y1 = std::max(y1, y);
    }
  if (x0 > x1) return InvalidError("plot: no points");
  if (x1 == x0) x1 = x0 + 1;
  // A round top for the y axis.
  const double step = std::pow(10, std::floor(std::log10(std::max(y1, 1.0) / 5)));
  double ystep = step;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (y1 / (step * m) <= 6) {
      ystep = step * m;
      break;
    }
  const double ytop = std::ceil(std::max(y1, 1.0) / ystep) * ystep;

  const int W = 900, H = 560, L = 90, R = 30, T = 60, B = 70;
  Canvas c(W, H);
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - y / ytop * (H - T - B); };
  for (double y = 0; y <= ytop + 1e-9; y += ystep) {
    c.Line(L, py(y), W - R, py(y), 0xdddddd, 1);
    const std::string s = Num(y);
    c.Text(L - 10 - static_cast<int>(s.size()) * 12, static_cast<int>(py(y)) - 7, s, 3, 0x333333);
  }
  std::vector<double> xs;
  for (const Series& s : series)
    for (const auto& p : s.points) xs.push_back(p.first);
  std::sort(xs.begin(), xs.end());
  xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
  for (double x : xs) {
    c.Line(px(x), T, px(x), H - B, 0xeeeeee, 1);
    const std::string s = Num(x);
    c.Text(static_cast<int>(px(x)) - static_cast<int>(s.size()) * 6, H - B + 10, s, 3, 0x333333);
  }
  c.Line(L, H - B, W - R, H - B, 0x000000, 2);
  c.Line(L, T, L, H - B, 0x000000, 2);
  c.Text(W / 2 - static_cast<int>(x_label.size()) * 6, H - 28, x_label, 3, 0x000000);
  c.Text(L, 20, title, 3, 0x000000);
  const uint32_t colours[] = {0xd62728, 0x1f77b4, 0xff7f0e, 0x2ca02c, 0x9467bd, 0x8c564b};
  int ly = T + 10;
  for (size_t i = 0; i < series.size(); ++i) {
    const uint32_t col = colours[i % std::size(colours)];
    const Series& s = series[i];
    for (size_t k = 0; k + 1 < s.points.size(); ++k)
      c.Line(px(s.points[k].first), py(s.points[k].second), px(s.points[k + 1].first),
             py(s.points[k + 1].second), col, 3);
    for (const auto& [x, y] : s.points)
      c.Rect(static_cast<int>(px(x)) - 3, static_cast<int>(py(y)) - 3, static_cast<int>(px(x)) + 3,
             static_cast<int>(py(y)) + 3, col);
    c.Rect(L + 20, ly + 4, L + 50, ly + 9, col);
    c.Text(L + 60, ly, s.name, 3, 0x000000);
    ly += 24;
  }
  std::ofstream out(path, std::ios::binary);
  const std::string png = EncodePng(W, H, c.px);
  out.write(png.data(), static_cast<std::streamsize>(png.size()));
  if (!out) return FailedError("plot: cannot write " + path);
  return Status::Ok();
}

}  // namespace kmosix::sim
