// The gRPC channel to one etcd endpoint, as every etcd adapter here dials it:
// the config's credentials (plain, or TLS over files gRPC re-reads every
// tls_refresh, the server always verified), its reconnect backoff and
// largest accepted message (max_receive_bytes), with a
// subchannel pool of its own (no sharing with other clients) and without
// gRPC's retry filter (callers retry; gRPC 1.51's aborts the process on a
// restarting TLS server, see Dial). Internal to lib/etcd: EtcdStateStore and
// EtcdAccessGrants.
// Thread-safety: stateless functions; the channels are gRPC's (thread-safe).
// Errors: none here; a config ValidateEtcdConfig refused gets plain
// credentials (its adapters never call through them).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "etcd/etcd_state_store.h"

namespace kmosix::etcd {

// `valid`: ValidateEtcdConfig(config).ok().
std::shared_ptr<grpc::ChannelCredentials> Credentials(const EtcdConfig& config, bool valid);

// `keepalive`: ping every 10 s (5 s timeout) while calls are in flight, for
// long-lived watch streams (etcd refuses pings more often than every 5 s,
// and pings without streams).
std::shared_ptr<grpc::Channel> Dial(const std::string& target,
                                    const std::shared_ptr<grpc::ChannelCredentials>& creds,
                                    const EtcdConfig& config, bool keepalive);

}  // namespace kmosix::etcd
