#include "etcd/etcd_channel.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <algorithm>

namespace kmosix::etcd {

std::shared_ptr<grpc::ChannelCredentials> Credentials(const EtcdConfig& config, bool valid) {
  if (!valid || !config.tls) return grpc::InsecureChannelCredentials();
  namespace gx = grpc::experimental;
  const auto refresh = static_cast<unsigned int>(config.tls_refresh.count());
  std::shared_ptr<gx::CertificateProviderInterface> files;
  if (config.cert_file.empty()) {
    files = std::make_shared<gx::FileWatcherCertificateProvider>(config.ca_file, refresh);
  } else {
    files = std::make_shared<gx::FileWatcherCertificateProvider>(config.key_file, config.cert_file,
                                                                 config.ca_file, refresh);
  }
  gx::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(files);
  options.watch_root_certs();
  if (!config.cert_file.empty()) options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  return gx::TlsCredentials(options);
}

std::shared_ptr<grpc::Channel> Dial(const std::string& target,
                                    const std::shared_ptr<grpc::ChannelCredentials>& creds,
                                    const EtcdConfig& config, bool keepalive) {
  grpc::ChannelArguments args;
  const int backoff = static_cast<int>(config.max_reconnect_backoff.count());
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::min(backoff, 100));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(backoff, 100));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, backoff);
  if (keepalive) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  }
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // No client-side retry filter: nothing here asks gRPC to retry (every
  // caller retries by its own rules), and gRPC 1.51's retry filter aborts the
  // whole process when a call's trailing metadata comes without a status,
  // which a TLS channel meets when its server restarts (grpc/grpc#34683,
  // fixed upstream only in 2026: "Assertion `false && "this->engaged_"'
  // failed" in absl::optional<grpc_status_code>). The fault soak saw an agent
  // die of it during an etcd restart (scripts/soak --seed 13).
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  // gRPC refuses answers over 4 MiB by default: a watch answer with a big
  // transaction's events (prev_kv included) would break the watch for good.
  args.SetMaxReceiveMessageSize(config.max_receive_bytes);
  return grpc::CreateCustomChannel(target, creds, args);
}

}  // namespace kmosix::etcd
