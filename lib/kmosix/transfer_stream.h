// The wire format of a migration's file transfer, and its encoder/decoder.
//
// A transfer stream carries every Section of a capture (a directory tree, e.g.
// CRIU images or an overlayfs upperdir, or a single file) as one byte stream:
//
//   stream   := header record* end
//   header   := "KMXSTRM\0" u32 version(=1) u32 flags u64 files u64 bytes  (32 bytes)
//               flags 0: files/bytes are the declared totals (regular files,
//               payload bytes) and bind the stream;
//               flags kOpenTotals (1): the totals were not known when the
//               stream began (a section was still being produced); files and
//               bytes must be 0 and only the end record's counts bind.
//               flags kNoContentDigests (2): file contents carry no SHA-256
//               (the 32-byte digests below are absent). Only for carriers
//               that authenticate every byte themselves (mutual TLS: each
//               TLS record is sealed with AES-GCM or ChaCha20-Poly1305, so
//               a second hash of the same bytes guards against nothing the
//               carrier does not); a decoder refuses it unless told the
//               carrier authenticates (DecoderOptions::accept_undigested).
//               Entry records stay covered by the end record's digest.
//   record   := u32 length (1..kMaxRecordSize) then `length` bytes whose first
//               byte is the record type:
//     1 section: u8 is_file, u16 n, name[n]
//     2 entry:   u8 kind, u32 mode (07777 bits), u32 uid, u32 gid, i64 mtime_ns,
//                u16 n, path[n] (relative to the section root, "" = the root),
//                u16 n, symlink target[n], u8 count, count * (u8 n, name[n],
//                u16 m, value[m]) xattrs, u64 size (0 unless a regular file)
//                A regular file entry is followed by `size` content bytes and
//                the 32-byte SHA-256 of those bytes (unless kNoContentDigests).
//                A chunked file entry (kind 6, open-totals streams only) has
//                size 0 and is followed by chunks, each u32 n (1..kMaxChunk)
//                then n content bytes, ended by u32 0, then the 32-byte
//                SHA-256 of the whole content (unless kNoContentDigests). It
//                lands as a regular file.
//     3 end:     u64 entries, u64 files, u64 bytes, 32-byte SHA-256 of the
//                header and of every record (length prefix included) before
//                the end record (file contents and digests excluded).
//   All integers are little-endian. Entries of a directory section come in
//   pre-order (a directory before its contents); a file section holds exactly
//   one regular-file entry with path "".
//
// Entry kinds: regular file, directory, symlink, overlay whiteout (char device
// 0:0), fifo and chunked file. Other device nodes and sockets are rejected by
// the encoder. A section with `pipes` (checkpoint.h) is sent as its root
// directory entry then one chunked file per pipe a writer opened; the encoder
// only then walks the next section (after its `before_read`).
// The only xattr carried is trusted.overlay.opaque (overlay opaque
// directories). Hard links are sent as independent copies.
//
// Ownership: both classes own the file descriptors they open and close them
// on destruction. Thread-safety: none; one thread drives an instance at a
// time. Errors (status.h): kInvalid for a malformed or hostile stream (bad
// magic/version, bad path, unknown section, sizes beyond declared totals or
// limits, unsupported entry kinds on the source), kFailed for checksum
// mismatches, truncated streams and local I/O failures, kNotFound for a
// missing source section. Errors are sticky: after one, every call returns it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kmosix/checkpoint.h"
#include "kmosix/status.h"
#include "kmosix/transport.h"

namespace kmosix {

inline constexpr uint32_t kTransferStreamVersion = 1;
inline constexpr size_t kTransferHeaderSize = 32;
inline constexpr uint32_t kMaxRecordSize = 16 * 1024;
inline constexpr uint32_t kOpenTotals = 1;        // header flag
inline constexpr uint32_t kNoContentDigests = 2;  // header flag
inline constexpr uint32_t kMaxChunk = 64 << 20;

enum class EntryKind : uint8_t {
  kFile = 1,
  kDirectory = 2,
  kSymlink = 3,
  kWhiteout = 4,  // overlayfs whiteout: character device 0:0
  kFifo = 5,
  kChunkedFile = 6,
};

struct EncoderOptions {
  // Largest single read(2) of a file body; Read() never reads more than its
  // caller's buffer either.
  size_t max_read = 1 << 20;
  // Pipes sections: how often producer_done() is asked while no pipe has
  // data, and how long nothing may happen (no data, no writer) before the
  // stream fails with kFailed "producer stalled".
  std::chrono::milliseconds pipe_poll{5};
  std::chrono::milliseconds pipe_stall{60000};
  // false: no per-file SHA-256 (header flag kNoContentDigests). Set it only
  // when the carrier authenticates the stream (mutual TLS); hashing is the
  // largest per-byte cost of the stream (SHA-256 ~2 GB/s per core here
  // against AES-GCM's ~5 GB/s).
  bool content_digests = true;
};

// Produces the stream for a list of sections, pulled by the caller:
//   auto enc = StreamEncoder::Create(sections);
//   while ((n = enc->Read(buf, sizeof buf)) > 0) send(buf, n);
// File contents are read straight into the caller's buffer and hashed on the
// way, so each file is read once and nothing is buffered beyond one record.
class StreamEncoder {
 public:
  // Walks every section (metadata only) to plan the stream and compute its
  // declared totals. kNotFound if a section path is missing, kInvalid for an
  // unsupported file type or a section whose kind does not match is_file.
  // When a section has `pipes` or `before_read`, the stream has open totals:
  // each section is walked only when the stream reaches it (errors above then
  // come from Read), and Read may block until a pipe has data.
  static StatusOr<std::unique_ptr<StreamEncoder>> Create(std::vector<Section> sections,
                                                         EncoderOptions options = {});
  ~StreamEncoder();
  StreamEncoder(const StreamEncoder&) = delete;
  StreamEncoder& operator=(const StreamEncoder&) = delete;

  // Copies up to n bytes of the stream into buf; returns how many (0 only at
  // the end of the stream, or when n == 0). kFailed if a file cannot be read
  // or changed size since Create.
  StatusOr<size_t> Read(char* buf, size_t n);

  bool done() const;
  // Whether the stream's length and totals were known at Create (no section
  // with pipes or before_read). The three accessors below are meaningful only
  // then; stats() once done() always gives what was sent.
  bool sized() const;
  // Exact length of the whole stream in bytes.
  uint64_t stream_size() const { return stream_size_; }
  // Declared totals: regular files and their payload bytes.
  uint64_t total_files() const { return total_files_; }
  uint64_t total_bytes() const { return total_bytes_; }
  // Files and payload bytes emitted so far (seconds is left 0).
  TransferStats stats() const { return stats_; }

 private:
  struct Planned;
  StreamEncoder(std::vector<Section> sections, EncoderOptions options);
  Status Plan();
  Status NextRecord();
  StatusOr<size_t> ReadBody(char* buf, size_t n);

  std::vector<Section> sections_;
  EncoderOptions options_;
  std::vector<Planned> plan_;
  size_t next_ = 0;  // index into plan_ of the next record to emit
  enum class State { kStart, kRecords, kBody, kEnd, kDone };
  State state_ = State::kStart;
  std::string pending_;  // bytes produced but not yet handed out
  size_t pending_off_ = 0;
  int fd_ = -1;  // file whose body is being streamed
  uint64_t body_left_ = 0;
  struct Sha;
  std::unique_ptr<Sha> body_sha_;
  std::unique_ptr<Sha> record_sha_;
  uint64_t stream_size_ = 0;
  uint64_t total_files_ = 0;
  uint64_t total_bytes_ = 0;
  uint64_t entries_ = 0;
  TransferStats stats_;
  Status error_;
};

struct DecoderOptions {
  // Refuse streams that declare more than this, and cut open-totals streams
  // that go beyond it (0 = no limit).
  uint64_t max_files = 0;
  uint64_t max_bytes = 0;
  // Refuse streams with more entries of any kind than this (0 = no limit).
  uint64_t max_entries = 0;
  // File bodies are written in blocks of this size.
  size_t write_buffer = 1 << 20;
  // Accept streams without file digests (kNoContentDigests): only when the
  // carrier authenticates every byte (a TLS connection). Otherwise such a
  // stream is kInvalid.
  bool accept_undigested = false;
};

// Writes a stream into the places a Landing names, fed incrementally:
//   StreamDecoder dec(landing);
//   for each chunk: KMX_RETURN_IF_ERROR(dec.Feed(p, n));
//   KMX_RETURN_IF_ERROR(dec.Finish());
// The stream is treated as hostile: entries are created relative to directory
// file descriptors without following symlinks, never replace an existing
// non-directory, and must stay under their section's landing. Landing paths
// themselves are trusted (a missing directory landing is created with mode
// 0700, its parent must exist). File metadata (owner, mode, xattrs, mtime) is
// applied once the file's checksum verified; directory mode and mtime once
// the end record verified. Nothing is complete before Finish() returns ok. On
// error the decoder stops; it does not remove what it wrote (the caller
// discards the landing).
class StreamDecoder {
 public:
  explicit StreamDecoder(Landing landing, DecoderOptions options = {});
  ~StreamDecoder();
  StreamDecoder(const StreamDecoder&) = delete;
  StreamDecoder& operator=(const StreamDecoder&) = delete;

  // Consumes n bytes of the stream.
  Status Feed(const char* data, size_t n);
  // Declares the end of input: ok only if the end record was received and
  // verified; kFailed "truncated stream" otherwise.
  Status Finish();

  bool complete() const;
  // Files and payload bytes verified so far (seconds is left 0).
  TransferStats stats() const;
  // Stream bytes consumed so far.
  uint64_t consumed() const;
  // Whether the error is one of the DecoderOptions limits (max_files,
  // max_bytes, max_entries), not a malformed or inconsistent stream.
  bool over_limits() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kmosix
