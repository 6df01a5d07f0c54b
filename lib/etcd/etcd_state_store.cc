#include "etcd/etcd_state_store.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <string_view>
#include <thread>
#include <utility>

#include "etcd/etcd_channel.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

namespace kmosix {

std::vector<std::string> ParseEtcdEndpoints(const std::string& flag) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= flag.size()) {
    size_t comma = flag.find(',', start);
    std::string item =
        flag.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    for (const char* scheme : {"http://", "https://"}) {
      if (item.rfind(scheme, 0) == 0) item = item.substr(std::string(scheme).size());
    }
    while (!item.empty() && item.back() == '/') item.pop_back();
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

namespace {

// kInvalid unless `path` is a readable file holding a PEM block.
Status CheckPemFile(const std::string& what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidError("etcd " + what + " " + path + ": cannot be read");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.find("-----BEGIN ") == std::string::npos)
    return InvalidError("etcd " + what + " " + path + ": no PEM data");
  return Status::Ok();
}

}  // namespace

Status ValidateEtcdConfig(const EtcdConfig& c) {
  if (c.endpoints.empty()) return InvalidError("etcd: no endpoint");
  if (!c.tls) {
    if (!c.ca_file.empty() || !c.cert_file.empty() || !c.key_file.empty())
      return InvalidError(
          "etcd: TLS files given for plaintext (http://) endpoints; use https:// endpoints or "
          "drop the files");
    return Status::Ok();
  }
  if (c.ca_file.empty())
    return InvalidError("etcd: TLS (https://) needs a CA file (--etcd-ca) to verify etcd");
  if (c.cert_file.empty() != c.key_file.empty())
    return InvalidError("etcd: a client certificate needs both --etcd-cert and --etcd-key");
  if (c.tls_refresh.count() < 1) return InvalidError("etcd: tls_refresh must be at least 1 s");
  KMX_RETURN_IF_ERROR(CheckPemFile("CA file", c.ca_file));
  if (!c.cert_file.empty()) {
    KMX_RETURN_IF_ERROR(CheckPemFile("client certificate", c.cert_file));
    KMX_RETURN_IF_ERROR(CheckPemFile("client key", c.key_file));
  }
  return Status::Ok();
}

StatusOr<EtcdConfig> EtcdConfigFromFlags(const std::string& endpoints, const std::string& ca_file,
                                         const std::string& cert_file,
                                         const std::string& key_file) {
  bool any_http = false, any_https = false;
  size_t start = 0;
  while (start <= endpoints.size()) {
    size_t comma = endpoints.find(',', start);
    std::string item =
        endpoints.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (item.rfind("https://", 0) == 0) any_https = true;
    if (item.rfind("http://", 0) == 0) any_http = true;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (any_http && any_https)
    return InvalidError("etcd: endpoints mix http:// and https:// (" + endpoints + ")");
  EtcdConfig config;
  config.endpoints = ParseEtcdEndpoints(endpoints);
  config.tls = any_https || (!any_http && !ca_file.empty());
  config.ca_file = ca_file;
  config.cert_file = cert_file;
  config.key_file = key_file;
  KMX_RETURN_IF_ERROR(ValidateEtcdConfig(config));
  return config;
}

namespace pb = ::etcdserverpb;
using Millis = std::chrono::milliseconds;

namespace {

bool Contains(const std::string& s, std::string_view what) {
  return s.find(what) != std::string::npos;
}

Status FromGrpc(const grpc::Status& s, std::string_view what) {
  std::string msg = std::string(what) + ": " + s.error_message();
  const std::string& m = s.error_message();
  switch (s.error_code()) {
    case grpc::StatusCode::OK:
      return Status::Ok();
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
      return RetryError(msg);
    case grpc::StatusCode::OUT_OF_RANGE:
      if (Contains(m, "compacted")) return ConflictError(msg + " (relist)");
      return InvalidError(msg);
    case grpc::StatusCode::NOT_FOUND:
      return NotFoundError(msg);
    case grpc::StatusCode::INVALID_ARGUMENT:
      // etcd auth: a read that ran while a role changed (the controller
      // grants and revokes node keys all the time) is refused as of an old
      // auth revision; asked again it runs under the new one.
      if (Contains(m, "revision of auth store is old")) return RetryError(msg);
      return InvalidError(msg);
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      // etcd auth: this identity's role does not allow it (now).
      return PermissionDeniedError(msg);
    default:
      if (Contains(m, "leader changed") || Contains(m, "no leader") || Contains(m, "timed out"))
        return RetryError(msg);
      return FailedError(msg);
  }
}

KeyValue FromPb(const ::mvccpb::KeyValue& kv) {
  return KeyValue{kv.key(),          kv.value(),   kv.create_revision(),
                  kv.mod_revision(), kv.version(), kv.lease()};
}

// The "key" of a range covering `prefix` (etcd wants "\0" for "from the start").
std::string RangeKey(const std::string& prefix) {
  return prefix.empty() ? std::string(1, '\0') : prefix;
}

Status CheckKey(const std::string& key) {
  if (key.empty()) return InvalidError("empty key");
  return Status::Ok();
}

void FillOp(const TxnOp& op, pb::RequestOp* out) {
  switch (op.kind) {
    case TxnOp::Kind::kPut: {
      auto* put = out->mutable_request_put();
      put->set_key(op.key);
      put->set_value(op.value);
      put->set_lease(op.lease);
      break;
    }
    case TxnOp::Kind::kDelete:
      out->mutable_request_delete_range()->set_key(op.key);
      break;
    case TxnOp::Kind::kDeletePrefix: {
      auto* del = out->mutable_request_delete_range();
      del->set_key(RangeKey(op.key));
      del->set_range_end(PrefixRangeEnd(op.key));
      break;
    }
  }
}

void FillCompare(const Compare& c, pb::Compare* out) {
  out->set_key(c.key);
  switch (c.op) {
    case Compare::Op::kEqual:
      out->set_result(pb::Compare::EQUAL);
      break;
    case Compare::Op::kNotEqual:
      out->set_result(pb::Compare::NOT_EQUAL);
      break;
    case Compare::Op::kLess:
      out->set_result(pb::Compare::LESS);
      break;
    case Compare::Op::kGreater:
      out->set_result(pb::Compare::GREATER);
      break;
  }
  switch (c.target) {
    case Compare::Target::kModRevision:
      out->set_target(pb::Compare::MOD);
      out->set_mod_revision(c.number);
      break;
    case Compare::Target::kCreateRevision:
      out->set_target(pb::Compare::CREATE);
      out->set_create_revision(c.number);
      break;
    case Compare::Target::kVersion:
      out->set_target(pb::Compare::VERSION);
      out->set_version(c.number);
      break;
    case Compare::Target::kValue:
      out->set_target(pb::Compare::VALUE);
      out->set_value(c.value);
      break;
  }
}

}  // namespace

struct EtcdStateStore::Impl {
  struct Endpoint {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::KV::Stub> kv;
    std::unique_ptr<pb::Watch::Stub> watch;
    std::unique_ptr<pb::Lease::Stub> lease;
  };

  EtcdConfig config;
  // Not ok: the config was refused (ValidateEtcdConfig); every call fails so.
  Status invalid;
  std::vector<Endpoint> endpoints;
  std::atomic<size_t> current{0};

  explicit Impl(EtcdConfig cfg) : config(std::move(cfg)) {
    if (config.endpoints.empty()) config.endpoints.push_back("127.0.0.1:2379");
    invalid = ValidateEtcdConfig(config);
    // A refused config still gets channels (the code below indexes them),
    // never used.
    auto creds = etcd::Credentials(config, invalid.ok());
    for (const auto& target : config.endpoints) {
      Endpoint ep;
      ep.target = target;
      // Keepalive: dead connections under long-lived watch streams are found.
      ep.channel = etcd::Dial(target, creds, config, /*keepalive=*/true);
      ep.kv = pb::KV::NewStub(ep.channel);
      ep.watch = pb::Watch::NewStub(ep.channel);
      ep.lease = pb::Lease::NewStub(ep.channel);
      endpoints.push_back(std::move(ep));
    }
  }

  size_t Pick() const { return current.load() % endpoints.size(); }

  // After a call on endpoint `i` found it unavailable: move on to the next.
  void Failed(size_t i) {
    size_t expected = i;
    current.compare_exchange_strong(expected, (i + 1) % endpoints.size());
  }

  // Waits up to the dial timeout for endpoint `i` to be connected.
  Status Connect(size_t i) {
    if (!invalid.ok()) return invalid;
    auto& ch = *endpoints[i].channel;
    if (ch.GetState(true) == GRPC_CHANNEL_READY) return Status::Ok();
    if (ch.WaitForConnected(std::chrono::system_clock::now() + config.dial_timeout))
      return Status::Ok();
    std::string why;
    if (config.tls) {
      // The channel says nothing about why; a call that does not wait for
      // the connection fails at once with gRPC's last connection error (a
      // refused or missing certificate shows up here).
      grpc::ClientContext ctx;
      ctx.set_wait_for_ready(false);
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
      pb::RangeRequest req;
      req.set_key("/");
      pb::RangeResponse resp;
      grpc::Status s = endpoints[i].kv->Range(&ctx, req, &resp);
      if (s.ok()) return Status::Ok();
      why = " (TLS; " + s.error_message() + ")";
    }
    Failed(i);
    return RetryError("etcd " + endpoints[i].target + ": not connected within " +
                      std::to_string(config.dial_timeout.count()) + " ms" + why);
  }

  void SetDeadline(grpc::ClientContext& ctx) const {
    ctx.set_deadline(std::chrono::system_clock::now() + config.rpc_timeout);
  }

  // Runs a unary call on the current endpoint: fn(endpoint, ctx) -> grpc::Status.
  template <typename Fn>
  Status Call(std::string_view what, Fn&& fn) {
    size_t i = Pick();
    KMX_RETURN_IF_ERROR(Connect(i).Annotate(what));
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = fn(endpoints[i], ctx);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) Failed(i);
    return FromGrpc(s, what);
  }
};

namespace {

using EtcdImpl = EtcdStateStore::Impl;

// ---- Watch -----------------------------------------------------------------

class EtcdWatcher final : public Watcher {
 public:
  EtcdWatcher(std::shared_ptr<EtcdImpl> impl, WatchOptions options)
      : impl_(std::move(impl)), options_(std::move(options)) {
    next_revision_ = options_.start_revision;
  }

  ~EtcdWatcher() override {
    Cancel();
    if (reader_.joinable()) reader_.join();
  }

  // Opens the stream and waits for the server to confirm the watch.
  Status Start() {
    size_t i = impl_->Pick();
    KMX_RETURN_IF_ERROR(impl_->Connect(i).Annotate("watch"));
    stream_ = impl_->endpoints[i].watch->Watch(&ctx_);
    pb::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(options_.prefix ? RangeKey(options_.key) : options_.key);
    if (options_.prefix) create->set_range_end(PrefixRangeEnd(options_.key));
    create->set_start_revision(options_.start_revision);
    create->set_prev_kv(options_.prev_kv);
    if (!stream_->Write(req)) {
      ctx_.TryCancel();
      grpc::Status s = stream_->Finish();
      impl_->Failed(i);
      Status st = FromGrpc(s, "watch");
      if (st.ok()) return RetryError("watch: stream closed before the watch was created");
      return st;
    }
    try {
      reader_ = std::thread([this] { ReadLoop(); });
    } catch (const std::exception& e) {
      ctx_.TryCancel();
      (void)stream_->Finish();
      return FailedError(std::string("watch: cannot start reader thread: ") + e.what());
    }
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, impl_->config.rpc_timeout,
                      [&] { return created_ || !terminal_.ok(); })) {
      lock.unlock();
      ctx_.TryCancel();
      return RetryError("watch: etcd did not confirm the watch in time");
    }
    if (!created_) return terminal_;
    return Status::Ok();
  }

  StatusOr<std::vector<WatchEvent>> Next(Millis timeout) override {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !queue_.empty() || !terminal_.ok(); });
    if (!queue_.empty()) {
      std::vector<WatchEvent> out;
      out.swap(queue_);
      next_revision_ = out.back().kv.mod_revision + 1;
      return out;
    }
    if (!terminal_.ok()) return terminal_;
    return std::vector<WatchEvent>{};
  }

  int64_t next_revision() const override {
    std::lock_guard lock(mu_);
    return next_revision_;
  }

  int64_t compact_revision() const override {
    std::lock_guard lock(mu_);
    return compact_revision_;
  }

  void Cancel() override {
    {
      std::lock_guard lock(mu_);
      if (terminal_.ok()) terminal_ = FailedError("watch cancelled");
      queue_.clear();
      cv_.notify_all();
    }
    ctx_.TryCancel();
  }

 private:
  void Finish(Status s) {
    std::lock_guard lock(mu_);
    if (terminal_.ok()) terminal_ = std::move(s);
    cv_.notify_all();
  }

  void ReadLoop() {
    pb::WatchResponse resp;
    bool cancelled_by_server = false;
    while (stream_->Read(&resp)) {
      if (resp.created()) {
        std::lock_guard lock(mu_);
        created_ = true;
        if (options_.start_revision == 0) next_revision_ = resp.header().revision() + 1;
        cv_.notify_all();
      }
      if (resp.canceled()) {
        cancelled_by_server = true;
        if (resp.compact_revision() > 0) {
          {
            std::lock_guard lock(mu_);
            compact_revision_ = resp.compact_revision();
            created_ = true;
          }
          Finish(ConflictError("watch from revision " + std::to_string(next_revision()) +
                               ": compacted (history starts at " +
                               std::to_string(resp.compact_revision()) + "), relist"));
        } else {
          Finish(RetryError("watch cancelled by etcd: " + resp.cancel_reason() +
                            "; watch again from next_revision()"));
        }
        break;
      }
      if (resp.events_size() == 0) continue;
      std::vector<WatchEvent> events;
      events.reserve(static_cast<size_t>(resp.events_size()));
      for (const auto& e : resp.events()) {
        WatchEvent ev;
        ev.type = e.type() == ::mvccpb::Event::DELETE ? WatchEvent::Type::kDelete
                                                      : WatchEvent::Type::kPut;
        ev.kv = FromPb(e.kv());
        if (options_.prev_kv && e.has_prev_kv() && !e.prev_kv().key().empty())
          ev.prev_kv = FromPb(e.prev_kv());
        events.push_back(std::move(ev));
      }
      std::lock_guard lock(mu_);
      if (!terminal_.ok()) continue;
      queue_.insert(queue_.end(), std::make_move_iterator(events.begin()),
                    std::make_move_iterator(events.end()));
      cv_.notify_all();
    }
    if (cancelled_by_server) ctx_.TryCancel();
    grpc::Status s = stream_->Finish();
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) impl_->Failed(impl_->Pick());
    Finish(RetryError("watch stream ended (" + s.error_message() +
                      "); watch again from next_revision()"));
  }

  std::shared_ptr<EtcdImpl> impl_;
  const WatchOptions options_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::WatchRequest, pb::WatchResponse>> stream_;
  std::thread reader_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WatchEvent> queue_;
  Status terminal_;
  bool created_ = false;
  int64_t next_revision_ = 0;
  int64_t compact_revision_ = 0;
};

// ---- Lease keep-alive ------------------------------------------------------

// One refresh over a short-lived keep-alive stream (bounded by the RPC
// deadline, so a silent server cannot block it). Returns the TTL left.
StatusOr<int64_t> RefreshOnce(EtcdImpl& impl, int64_t id, grpc::ClientContext& ctx) {
  // No Connect(): the deadline bounds the call and TryCancel() can end it (a
  // fail-fast call on a channel in TRANSIENT_FAILURE fails at once).
  size_t i = impl.Pick();
  impl.SetDeadline(ctx);
  auto stream = impl.endpoints[i].lease->LeaseKeepAlive(&ctx);
  pb::LeaseKeepAliveRequest req;
  req.set_id(id);
  pb::LeaseKeepAliveResponse resp;
  bool ok = stream->Write(req) && stream->WritesDone() && stream->Read(&resp);
  if (!ok) ctx.TryCancel();
  grpc::Status s = stream->Finish();
  if (!ok) {
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) impl.Failed(i);
    Status st = FromGrpc(s, "lease keep-alive");
    if (st.ok()) return RetryError("lease keep-alive: stream closed without an answer");
    return st;
  }
  if (resp.ttl() <= 0) return NotFoundError("lease " + std::to_string(id) + " not found (expired)");
  return resp.ttl();
}

class EtcdKeepAlive final : public LeaseKeepAlive {
 public:
  EtcdKeepAlive(std::shared_ptr<EtcdImpl> impl, int64_t id, int64_t ttl, LeaseLostCallback cb)
      : impl_(std::move(impl)), id_(id), ttl_(ttl), on_lost_(std::move(cb)) {}

  ~EtcdKeepAlive() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      if (ctx_) ctx_->TryCancel();
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }

  Status Start() {
    try {
      thread_ = std::thread([this] { Loop(); });
    } catch (const std::exception& e) {
      return FailedError(std::string("lease keep-alive: cannot start thread: ") + e.what());
    }
    return Status::Ok();
  }

  int64_t lease() const override { return id_; }

  Status status() const override {
    std::lock_guard lock(mu_);
    return status_;
  }

  Status WaitLost(Millis timeout) override {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !status_.ok(); });
    return status_;
  }

 private:
  void Loop() {
    using Clock = std::chrono::steady_clock;
    auto last_ok = Clock::now();
    auto interval = [&] { return std::max(Millis(ttl_ * 1000 / 3), Millis(300)); };
    Millis wait = interval();
    for (;;) {
      {
        std::unique_lock lock(mu_);
        if (cv_.wait_for(lock, wait, [&] { return stop_; })) return;
      }
      grpc::ClientContext ctx;
      {
        std::lock_guard lock(mu_);
        if (stop_) return;
        ctx_ = &ctx;
      }
      auto r = RefreshOnce(*impl_, id_, ctx);
      {
        std::lock_guard lock(mu_);
        ctx_ = nullptr;
        if (stop_) return;
      }
      Status lost;
      if (r.ok()) {
        last_ok = Clock::now();
        ttl_ = *r;
        wait = interval();
      } else if (r.status().code() == Code::kNotFound) {
        lost = r.status();
      } else if (Clock::now() - last_ok >= std::chrono::seconds(ttl_)) {
        lost = RetryError("lease " + std::to_string(id_) + " presumed expired: not refreshed for " +
                          std::to_string(ttl_) + " s (" + r.status().message() + ")");
      } else {
        wait = Millis(250);  // retry soon
      }
      if (!lost.ok()) {
        {
          std::lock_guard lock(mu_);
          status_ = lost;
          cv_.notify_all();
        }
        if (on_lost_) on_lost_(lost);
        return;
      }
    }
  }

  std::shared_ptr<EtcdImpl> impl_;
  const int64_t id_;
  int64_t ttl_;  // refresher thread only
  LeaseLostCallback on_lost_;
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  grpc::ClientContext* ctx_ = nullptr;  // the refresh in flight
  Status status_;
};

}  // namespace

// ---- EtcdStateStore ----------------------------------------------------------

EtcdStateStore::EtcdStateStore(EtcdConfig config)
    : impl_(std::make_shared<Impl>(std::move(config))) {}

StatusOr<std::unique_ptr<EtcdStateStore>> EtcdStateStore::Open(EtcdConfig config) {
  if (config.endpoints.empty()) config.endpoints.push_back("127.0.0.1:2379");
  KMX_RETURN_IF_ERROR(ValidateEtcdConfig(config));
  return std::make_unique<EtcdStateStore>(std::move(config));
}

EtcdStateStore::~EtcdStateStore() = default;

StatusOr<GetResult> EtcdStateStore::Get(const std::string& key, int64_t revision) {
  KMX_RETURN_IF_ERROR(CheckKey(key));
  if (revision < 0) return InvalidError("negative revision");
  pb::RangeRequest req;
  req.set_key(key);
  req.set_revision(revision);
  pb::RangeResponse resp;
  KMX_RETURN_IF_ERROR(impl_->Call("get " + key, [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
    return ep.kv->Range(&ctx, req, &resp);
  }));
  GetResult out;
  out.revision = resp.header().revision();
  if (resp.kvs_size() > 0) out.kv = FromPb(resp.kvs(0));
  return out;
}

namespace {

// Pages of one List, read at one revision (see the header).
StatusOr<ListResult> ListPages(EtcdImpl& impl, const std::string& prefix,
                               const ListOptions& options) {
  const std::string what = "list " + prefix;
  const std::string range_end = PrefixRangeEnd(prefix);
  std::string from = RangeKey(prefix);
  int64_t page = std::max<int64_t>(1, impl.config.list_page_limit);
  int64_t at = options.revision;  // 0 until the first page says where "now" is
  ListResult out;
  bool first = true;
  while (true) {
    int64_t want = page;
    if (options.limit > 0)
      want = std::min<int64_t>(want, options.limit - static_cast<int64_t>(out.kvs.size()));
    pb::RangeRequest req;
    req.set_key(from);
    req.set_range_end(range_end);
    req.set_revision(at);
    req.set_limit(want);
    // No sort order: etcd returns a range in key order anyway, and a sorted
    // Range reads the whole range before applying the limit.
    pb::RangeResponse resp;
    grpc::Status raw;
    Status s = impl.Call(what, [&](EtcdImpl::Endpoint& ep, grpc::ClientContext& ctx) {
      raw = ep.kv->Range(&ctx, req, &resp);
      return raw;
    });
    // Over max_receive_bytes (gRPC's own refusal, not etcd's "too many
    // requests", also RESOURCE_EXHAUSTED): fewer keys per page.
    if (raw.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED && want > 1 &&
        Contains(raw.error_message(), "larger than max")) {
      page = std::max<int64_t>(1, want / 2);
      continue;
    }
    KMX_RETURN_IF_ERROR(s);
    if (first) {
      out.revision = resp.header().revision();
      if (at == 0) at = out.revision;
      first = false;
    }
    for (const auto& kv : resp.kvs()) out.kvs.push_back(FromPb(kv));
    if (!resp.more() || resp.kvs_size() == 0) break;
    if (options.limit > 0 && static_cast<int64_t>(out.kvs.size()) >= options.limit) {
      out.more = true;
      break;
    }
    from = out.kvs.back().key;
    from.push_back('\0');
  }
  return out;
}

}  // namespace

StatusOr<ListResult> EtcdStateStore::List(const std::string& prefix, const ListOptions& options) {
  if (options.revision < 0 || options.limit < 0) return InvalidError("negative revision or limit");
  constexpr int kAttempts = 3;
  for (int attempt = 1;; ++attempt) {
    StatusOr<ListResult> listed = ListPages(*impl_, prefix, options);
    // The first page's revision was compacted before the last page was read:
    // a listing of "now" starts over at a new "now".
    if (listed.ok() || options.revision != 0 || listed.status().code() != Code::kConflict ||
        attempt == kAttempts)
      return listed;
  }
}

StatusOr<int64_t> EtcdStateStore::Put(const std::string& key, const std::string& value,
                                      const PutOptions& options) {
  KMX_RETURN_IF_ERROR(CheckKey(key));
  pb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  req.set_lease(options.lease);
  pb::PutResponse resp;
  KMX_RETURN_IF_ERROR(impl_->Call("put " + key, [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
    return ep.kv->Put(&ctx, req, &resp);
  }));
  return resp.header().revision();
}

StatusOr<DeleteResult> EtcdStateStore::Delete(const std::string& key) {
  KMX_RETURN_IF_ERROR(CheckKey(key));
  pb::DeleteRangeRequest req;
  req.set_key(key);
  pb::DeleteRangeResponse resp;
  KMX_RETURN_IF_ERROR(
      impl_->Call("delete " + key, [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
        return ep.kv->DeleteRange(&ctx, req, &resp);
      }));
  return DeleteResult{resp.deleted(), resp.header().revision()};
}

StatusOr<DeleteResult> EtcdStateStore::DeletePrefix(const std::string& prefix) {
  pb::DeleteRangeRequest req;
  req.set_key(RangeKey(prefix));
  req.set_range_end(PrefixRangeEnd(prefix));
  pb::DeleteRangeResponse resp;
  KMX_RETURN_IF_ERROR(
      impl_->Call("delete prefix " + prefix, [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
        return ep.kv->DeleteRange(&ctx, req, &resp);
      }));
  return DeleteResult{resp.deleted(), resp.header().revision()};
}

StatusOr<TxnResult> EtcdStateStore::Commit(const Txn& txn) {
  pb::TxnRequest req;
  for (const auto& c : txn.compares) {
    KMX_RETURN_IF_ERROR(CheckKey(c.key).Annotate("txn compare"));
    FillCompare(c, req.add_compare());
  }
  for (const auto* branch : {&txn.then_ops, &txn.else_ops}) {
    for (const auto& op : *branch) {
      if (op.kind != TxnOp::Kind::kDeletePrefix)
        KMX_RETURN_IF_ERROR(CheckKey(op.key).Annotate("txn op"));
      FillOp(op, branch == &txn.then_ops ? req.add_success() : req.add_failure());
    }
  }
  pb::TxnResponse resp;
  KMX_RETURN_IF_ERROR(impl_->Call("txn", [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
    return ep.kv->Txn(&ctx, req, &resp);
  }));
  return TxnResult{resp.succeeded(), resp.header().revision()};
}

Status EtcdStateStore::Compact(int64_t revision) {
  if (revision <= 0) return InvalidError("compact: revision must be positive");
  pb::CompactionRequest req;
  req.set_revision(revision);
  req.set_physical(true);
  pb::CompactionResponse resp;
  Status s = impl_->Call("compact", [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
    return ep.kv->Compact(&ctx, req, &resp);
  });
  // Compacting an already compacted revision is kConflict (from "compacted").
  return s;
}

StatusOr<std::unique_ptr<Watcher>> EtcdStateStore::Watch(const WatchOptions& options) {
  if (options.key.empty() && !options.prefix) return InvalidError("watch: empty key");
  if (options.start_revision < 0) return InvalidError("watch: negative start revision");
  auto w = std::make_unique<EtcdWatcher>(impl_, options);
  KMX_RETURN_IF_ERROR(w->Start());
  return std::unique_ptr<Watcher>(std::move(w));
}

StatusOr<LeaseGrant> EtcdStateStore::GrantLease(std::chrono::seconds ttl) {
  if (ttl.count() <= 0) return InvalidError("lease TTL must be positive");
  pb::LeaseGrantRequest req;
  req.set_ttl(ttl.count());
  pb::LeaseGrantResponse resp;
  KMX_RETURN_IF_ERROR(impl_->Call("lease grant", [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
    return ep.lease->LeaseGrant(&ctx, req, &resp);
  }));
  if (!resp.error().empty()) return FailedError("lease grant: " + resp.error());
  return LeaseGrant{resp.id(), std::chrono::seconds(resp.ttl())};
}

Status EtcdStateStore::RevokeLease(int64_t id) {
  pb::LeaseRevokeRequest req;
  req.set_id(id);
  pb::LeaseRevokeResponse resp;
  return impl_->Call("lease revoke", [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
    return ep.lease->LeaseRevoke(&ctx, req, &resp);
  });
}

StatusOr<std::chrono::seconds> EtcdStateStore::LeaseTimeToLive(int64_t id) {
  pb::LeaseTimeToLiveRequest req;
  req.set_id(id);
  pb::LeaseTimeToLiveResponse resp;
  KMX_RETURN_IF_ERROR(
      impl_->Call("lease time-to-live", [&](Impl::Endpoint& ep, grpc::ClientContext& ctx) {
        return ep.lease->LeaseTimeToLive(&ctx, req, &resp);
      }));
  if (resp.ttl() < 0) return NotFoundError("lease " + std::to_string(id) + " not found");
  return std::chrono::seconds(resp.ttl());
}

StatusOr<std::unique_ptr<LeaseKeepAlive>> EtcdStateStore::KeepAlive(int64_t id,
                                                                    LeaseLostCallback on_lost) {
  KMX_RETURN_IF_ERROR(impl_->invalid);
  grpc::ClientContext ctx;
  KMX_ASSIGN_OR_RETURN(int64_t ttl, RefreshOnce(*impl_, id, ctx));
  auto ka = std::make_unique<EtcdKeepAlive>(impl_, id, ttl, std::move(on_lost));
  KMX_RETURN_IF_ERROR(ka->Start());
  return std::unique_ptr<LeaseKeepAlive>(std::move(ka));
}

}  // namespace kmosix
