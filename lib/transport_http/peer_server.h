// Server half of the agent-to-agent protocol (routes: see http_transport.h).
//
// RegisterPeerRoutes adds the /v1/peer/... routes to an httplib::Server and
// serves them from a MigrationTarget. The stream route feeds the request body
// to a StreamDecoder as it arrives (nothing is buffered beyond one chunk):
// target.BeginReceive(id) first (for the Landing), then
// target.EndReceive(id, result, stats) exactly once, with an error if the
// decoder failed, the body was cut, or it ended before the end record. After
// an early error the rest of the body is read and dropped (up to
// max_drain_bytes) so that the client gets the error answer.
//
// Ownership: `target` (and options.clock, if set) must outlive the server.
// Thread-safety: handlers run on the server's threads concurrently; the
// target must be thread-safe (it is, per its contract). Handlers never throw
// and answer every error as JSON {"code","message"} with HttpStatus(code); a
// busy refusal (kmosix/intake_limits.h BusyError) is 503 with Retry-After.
// Note: httplib's server read timeout (Server::set_read_timeout, 5 s by
// default) bounds how long the source may stall between stream chunks.
#pragma once

#include <httplib.h>

#include <cstdint>

#include "kmosix/clock.h"
#include "kmosix/transfer_stream.h"
#include "kmosix/transport.h"

namespace kmosix {

struct PeerServerOptions {
  DecoderOptions decoder;
  // For TransferStats::seconds; nullptr = a SystemClock.
  Clock* clock = nullptr;
  uint64_t max_drain_bytes = uint64_t{1} << 30;
  // Port of this agent's DataServer (data_channel.h), announced in
  // /v1/peer/info so sources stream over it; 0: streams use the HTTP route.
  int data_port = 0;
};

void RegisterPeerRoutes(httplib::Server& server, MigrationTarget& target,
                        PeerServerOptions options = {});

}  // namespace kmosix
