#include "containerd/containerd_runtime.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <exception>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <utility>

#include "containerd/oci_spec.h"
#include "containerd/workload_network.h"
#include "github.com/containerd/containerd/api/services/containers/v1/containers.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/content/v1/content.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/images/v1/images.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/leases/v1/leases.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/tasks/v1/tasks.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/version/v1/version.grpc.pb.h"
#include "github.com/containerd/containerd/runtime/v2/runc/options/oci.pb.h"
#include "kmosix/files.h"

namespace kmosix {
namespace {

namespace ctrs = ::containerd::services::containers::v1;
namespace content = ::containerd::services::content::v1;
namespace images = ::containerd::services::images::v1;
namespace leases = ::containerd::services::leases::v1;
namespace snaps = ::containerd::services::snapshots::v1;
namespace tasks = ::containerd::services::tasks::v1;
namespace version = ::containerd::services::version::v1;
namespace ttypes = ::containerd::v1::types;
namespace runcopts = ::containerd::runc::v1;
using json = nlohmann::json;

constexpr char kSpecTypeUrl[] = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
constexpr char kRuncOptionsTypeUrl[] = "containerd.runc.v1.Options";
constexpr char kCheckpointOptionsTypeUrl[] = "containerd.runc.v1.CheckpointOptions";
constexpr char kLabelLogPath[] = "io.kmosix.log-path";
constexpr char kLabelNode[] = "io.kmosix.node";
constexpr char kAnnotationIncarnation[] = "io.kmosix.incarnation";
// runc hands this file to CRIU as its RPC configuration file.
constexpr char kAnnotationCriuConfig[] = "org.criu.config";

// Maximum size of a manifest/index/config blob we are willing to read.
constexpr int64_t kMaxBlob = 16 << 20;

Status FromGrpc(const grpc::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  std::string msg = std::string(what) + ": " + s.error_message();
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return RetryError(std::move(msg));
    case grpc::StatusCode::NOT_FOUND:
      return NotFoundError(std::move(msg));
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::FAILED_PRECONDITION:
      return ConflictError(std::move(msg));
    case grpc::StatusCode::INVALID_ARGUMENT:
      return InvalidError(std::move(msg));
    default:
      return FailedError(std::move(msg));
  }
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

TaskState FromProtoStatus(ttypes::Status s) {
  switch (s) {
    case ttypes::CREATED:
      return TaskState::kCreated;
    case ttypes::RUNNING:
      return TaskState::kRunning;
    case ttypes::STOPPED:
      return TaskState::kStopped;
    case ttypes::PAUSED:
      return TaskState::kPaused;
    case ttypes::PAUSING:
      return TaskState::kRunning;  // transient; not yet frozen
    default:
      return TaskState::kUnknown;
  }
}

std::string NewIncarnation() {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  uint64_t r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  auto now = std::chrono::system_clock::now().time_since_epoch().count();
  char buf[80];
  std::snprintf(buf, sizeof(buf), "%llx-%llx-%llx", static_cast<unsigned long long>(now),
                static_cast<unsigned long long>(r),
                static_cast<unsigned long long>(counter.fetch_add(1)));
  return buf;
}

// Runs `fn` and converts escaping exceptions into kFailed.
template <typename Fn>
auto Guard(std::string_view what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return FailedError(std::string(what) + ": unexpected exception: " + e.what());
  } catch (...) {
    return FailedError(std::string(what) + ": unexpected exception");
  }
}

}  // namespace

struct ContainerdRuntime::Impl {
  explicit Impl(ContainerdConfig c) : cfg(std::move(c)) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    // No gRPC-level retries (as on the etcd channels, lib/etcd/etcd_channel.cc):
    // nothing here configures a retry policy (a kRetry is the caller's to
    // retry by its own rules), and gRPC 1.51's retry filter aborts the whole
    // process when a call's trailing metadata comes without a status, which
    // a channel can meet when its server dies mid-call (grpc/grpc#34683). The
    // fault soak saw agents die of it when etcd restarted (B1); containerd is
    // killed and restarted under the agent just as often.
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    channel = grpc::CreateCustomChannel("unix://" + cfg.socket_path,
                                        grpc::InsecureChannelCredentials(), args);
    containers = ctrs::Containers::NewStub(channel);
    content_svc = content::Content::NewStub(channel);
    images_svc = images::Images::NewStub(channel);
    leases_svc = leases::Leases::NewStub(channel);
    snapshots = snaps::Snapshots::NewStub(channel);
    tasks_svc = tasks::Tasks::NewStub(channel);
    version_svc = version::Version::NewStub(channel);
  }

  std::unique_ptr<grpc::ClientContext> Ctx(std::chrono::milliseconds timeout,
                                           const std::string& lease = "") const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("containerd-namespace", cfg.containerd_namespace);
    if (!lease.empty()) ctx->AddMetadata("containerd-lease", lease);
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    return ctx;
  }
  std::unique_ptr<grpc::ClientContext> Ctx() const { return Ctx(cfg.rpc_timeout); }

  runcopts::Options RuncOptions() const {
    runcopts::Options o;
    o.set_root(cfg.runc_root);
    if (!cfg.criu_path.empty()) o.set_criu_path(cfg.criu_path);
    return o;
  }

  static void PackAny(const google::protobuf::Message& m, const char* type_url,
                      google::protobuf::Any* any) {
    any->set_type_url(type_url);
    any->set_value(m.SerializeAsString());
  }

  StatusOr<ctrs::Container> GetContainer(const std::string& name) {
    ctrs::GetContainerRequest req;
    req.set_id(name);
    ctrs::GetContainerResponse resp;
    auto ctx = Ctx();
    Status s = FromGrpc(containers->Get(ctx.get(), req, &resp), "get container " + name);
    if (!s.ok()) return s;
    return resp.container();
  }

  // Task status; NotFound when the container has no task.
  StatusOr<ttypes::Process> GetTask(const std::string& name) {
    tasks::GetRequest req;
    req.set_container_id(name);
    tasks::GetResponse resp;
    auto ctx = Ctx();
    Status s = FromGrpc(tasks_svc->Get(ctx.get(), req, &resp), "get task " + name);
    if (!s.ok()) return s;
    return resp.process();
  }

  StatusOr<std::string> ReadBlob(const std::string& digest) {
    content::InfoRequest ireq;
    ireq.set_digest(digest);
    content::InfoResponse iresp;
    {
      auto ctx = Ctx();
      KMX_RETURN_IF_ERROR(
          FromGrpc(content_svc->Info(ctx.get(), ireq, &iresp), "content info " + digest));
    }
    if (iresp.info().size() > kMaxBlob) return FailedError("blob " + digest + " is too large");
    content::ReadContentRequest req;
    req.set_digest(digest);
    auto ctx = Ctx();
    auto reader = content_svc->Read(ctx.get(), req);
    std::string data;
    content::ReadContentResponse resp;
    while (reader->Read(&resp)) {
      if (resp.offset() != static_cast<int64_t>(data.size()))
        return FailedError("content read " + digest + ": unexpected offset");
      data += resp.data();
      if (static_cast<int64_t>(data.size()) > kMaxBlob)
        return FailedError("blob " + digest + " is too large");
    }
    KMX_RETURN_IF_ERROR(FromGrpc(reader->Finish(), "content read " + digest));
    return data;
  }

  // image name -> OCI image config (following an index to linux/amd64).
  StatusOr<OciImageConfig> ResolveImageConfig(const std::string& image) {
    images::GetImageRequest req;
    req.set_name(image);
    images::GetImageResponse resp;
    {
      auto ctx = Ctx();
      KMX_RETURN_IF_ERROR(FromGrpc(images_svc->Get(ctx.get(), req, &resp), "image " + image));
    }
    std::string media_type = resp.image().target().media_type();
    std::string digest = resp.image().target().digest();
    for (int depth = 0; depth < 4; ++depth) {
      KMX_ASSIGN_OR_RETURN(std::string blob, ReadBlob(digest));
      json j = json::parse(blob, nullptr, false);
      if (j.is_discarded() || !j.is_object())
        return FailedError("image " + image + ": blob " + digest + " is not JSON");
      if (media_type.empty() && j.contains("mediaType") && j["mediaType"].is_string())
        media_type = j["mediaType"].get<std::string>();
      bool is_index = media_type == "application/vnd.oci.image.index.v1+json" ||
                      media_type == "application/vnd.docker.distribution.manifest.list.v2+json" ||
                      (media_type.empty() && j.contains("manifests"));
      if (is_index) {
        if (!j.contains("manifests") || !j["manifests"].is_array() || j["manifests"].empty())
          return FailedError("image " + image + ": index has no manifests");
        const json* pick = nullptr;
        for (const auto& m : j["manifests"]) {
          if (!m.is_object()) continue;
          auto p = m.find("platform");
          if (p == m.end()) continue;
          if (p->value("os", "") == "linux" && p->value("architecture", "") == "amd64") {
            pick = &m;
            break;
          }
        }
        if (pick == nullptr && j["manifests"].size() == 1) pick = &j["manifests"][0];
        if (pick == nullptr)
          return NotFoundError("image " + image + ": no linux/amd64 manifest in index");
        media_type = pick->value("mediaType", "");
        digest = pick->value("digest", "");
        continue;
      }
      auto cfg_it = j.find("config");
      if (cfg_it == j.end() || !cfg_it->is_object() || !cfg_it->contains("digest"))
        return FailedError("image " + image + ": manifest has no config");
      std::string cfg_digest = (*cfg_it)["digest"].get<std::string>();
      KMX_ASSIGN_OR_RETURN(std::string cfg_blob, ReadBlob(cfg_digest));
      auto parsed = ParseOciImageConfig(cfg_blob);
      if (!parsed.ok()) return parsed.status().Annotate("image " + image);
      return parsed;
    }
    return FailedError("image " + image + ": index nesting too deep");
  }

  StatusOr<std::vector<::containerd::types::Mount>> RootfsMounts(const ctrs::Container& c) {
    snaps::MountsRequest req;
    req.set_snapshotter(c.snapshotter().empty() ? cfg.snapshotter : c.snapshotter());
    req.set_key(c.snapshot_key().empty() ? c.id() : c.snapshot_key());
    snaps::MountsResponse resp;
    auto ctx = Ctx();
    KMX_RETURN_IF_ERROR(
        FromGrpc(snapshots->Mounts(ctx.get(), req, &resp), "snapshot mounts of " + c.id()));
    return std::vector<::containerd::types::Mount>(resp.mounts().begin(), resp.mounts().end());
  }

  // Kills (SIGKILL, all processes) and waits until the task is stopped.
  Status KillAndWait(const std::string& name) {
    auto deadline = std::chrono::steady_clock::now() + cfg.kill_timeout;
    bool resumed = false;
    for (int attempt = 0;; ++attempt) {
      auto task = GetTask(name);
      if (!task.ok()) {
        if (task.status().code() == Code::kNotFound) return Status::Ok();
        return task.status();
      }
      if (task->status() == ttypes::STOPPED) return Status::Ok();
      if (task->status() == ttypes::CREATED && task->pid() == 0) return Status::Ok();
      if (attempt % 10 == 0) {
        tasks::KillRequest kreq;
        kreq.set_container_id(name);
        kreq.set_signal(SIGKILL);
        kreq.set_all(true);
        google::protobuf::Empty e;
        auto ctx = Ctx();
        Status ks = FromGrpc(tasks_svc->Kill(ctx.get(), kreq, &e), "kill task " + name);
        if (!ks.ok() && ks.code() != Code::kNotFound) {
          // Killing with all=true fails once no process is left; fall through and poll.
          if (ks.code() == Code::kRetry) return ks;
        }
      }
      // A frozen task cannot die; thaw it if it is still paused after a kill.
      if (!resumed && attempt >= 5 &&
          (task->status() == ttypes::PAUSED || task->status() == ttypes::PAUSING)) {
        tasks::ResumeTaskRequest rreq;
        rreq.set_container_id(name);
        google::protobuf::Empty e;
        auto ctx = Ctx();
        (void)tasks_svc->Resume(ctx.get(), rreq, &e);
        resumed = true;
      }
      if (std::chrono::steady_clock::now() > deadline)
        return RetryError("task " + name + " did not exit within kill timeout");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  Status DeleteTask(const std::string& name) {
    tasks::DeleteTaskRequest req;
    req.set_container_id(name);
    tasks::DeleteResponse resp;
    auto ctx = Ctx();
    Status s = FromGrpc(tasks_svc->Delete(ctx.get(), req, &resp), "delete task " + name);
    if (s.code() == Code::kNotFound) return Status::Ok();
    return s;
  }

  // Removes a task left behind by a failed Create/Start.
  void CleanupTask(const std::string& name) {
    (void)KillAndWait(name);
    (void)DeleteTask(name);
  }

  Status CreateAndStartTask(const std::string& name, const runcopts::Options& opts,
                            std::chrono::milliseconds start_timeout, std::string_view what) {
    KMX_ASSIGN_OR_RETURN(ctrs::Container c, GetContainer(name));
    KMX_ASSIGN_OR_RETURN(auto mounts, RootfsMounts(c));
    std::string log_path;
    auto it = c.labels().find(kLabelLogPath);
    if (it != c.labels().end()) log_path = it->second;

    tasks::CreateTaskRequest req;
    req.set_container_id(name);
    for (auto& m : mounts) *req.add_rootfs() = std::move(m);
    if (!log_path.empty()) {
      // The runc shim opens the file O_APPEND|O_CREATE and, because stdout and
      // stderr name the same path, copies both pipes into one writer. stderr
      // must be non-empty too, or the shim creates no stderr pipe at all.
      req.set_stdout("file://" + log_path);
      req.set_stderr("file://" + log_path);
    }
    PackAny(opts, kRuncOptionsTypeUrl, req.mutable_options());
    tasks::CreateTaskResponse cresp;
    {
      auto ctx = Ctx(start_timeout);
      Status s = FromGrpc(tasks_svc->Create(ctx.get(), req, &cresp),
                          std::string(what) + ": create task " + name);
      if (!s.ok()) {
        if (s.code() != Code::kConflict) CleanupTask(name);  // Conflict: a task already exists
        return s;
      }
    }
    tasks::StartRequest sreq;
    sreq.set_container_id(name);
    tasks::StartResponse sresp;
    auto ctx = Ctx(start_timeout);
    Status s = FromGrpc(tasks_svc->Start(ctx.get(), sreq, &sresp),
                        std::string(what) + ": start task " + name);
    if (!s.ok()) {
      CleanupTask(name);
      // A restore that failed is final (bad images), not a state conflict.
      if (s.code() == Code::kConflict) s = FailedError(s.message());
      return s;
    }
    return Status::Ok();
  }

  // A short-lived lease that protects a fresh snapshot from containerd's
  // garbage collector until the container referencing it exists.
  StatusOr<std::string> CreateLease() {
    leases::CreateRequest req;
    req.set_id("kmosix-" + NewIncarnation());
    auto expire = std::chrono::system_clock::now() + std::chrono::hours(1);
    std::time_t t = std::chrono::system_clock::to_time_t(expire);
    std::tm tm;
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    (*req.mutable_labels())["containerd.io/gc.expire"] = buf;
    leases::CreateResponse resp;
    auto ctx = Ctx();
    KMX_RETURN_IF_ERROR(FromGrpc(leases_svc->Create(ctx.get(), req, &resp), "create lease"));
    return req.id();
  }

  void DeleteLease(const std::string& id) {
    leases::DeleteRequest req;
    req.set_id(id);
    google::protobuf::Empty e;
    auto ctx = Ctx();
    (void)leases_svc->Delete(ctx.get(), req, &e);
  }

  // Points the container's CRIU configuration file at `path`: runc reads
  // the spec's "org.criu.config" annotation when it creates the task (the
  // shim writes the spec into the bundle then) and keeps it for the task's
  // life.
  Status SetCriuConfig(const std::string& name, const std::string& path) {
    KMX_ASSIGN_OR_RETURN(ctrs::Container c, GetContainer(name));
    json spec = json::parse(c.spec().value(), nullptr, false);
    if (spec.is_discarded() || !spec.is_object()) {
      return FailedError("container " + name + ": its OCI spec is not JSON");
    }
    if (spec.contains("annotations") && !spec["annotations"].is_object()) {
      return FailedError("container " + name + ": its spec's annotations are not an object");
    }
    spec["annotations"][kAnnotationCriuConfig] = path;
    ctrs::UpdateContainerRequest req;
    *req.mutable_container() = c;
    req.mutable_container()->mutable_spec()->set_value(spec.dump());
    req.mutable_update_mask()->add_paths("spec");
    ctrs::UpdateContainerResponse resp;
    auto ctx = Ctx();
    return FromGrpc(containers->Update(ctx.get(), req, &resp), "update container " + name);
  }

  // runc's root for this node's containers: the shim runs runc with
  // --root <runc_root>/<containerd namespace>.
  std::string RuncRoot() const {
    const std::string base = cfg.runc_root.empty() ? "/run/containerd/runc" : cfg.runc_root;
    return base + "/" + cfg.containerd_namespace;
  }

  // Called once containerd has no task of `name` any more: removes runc's
  // state of it if containerd left it (see Delete in the header).
  Status RemoveRuncLeftovers(const std::string& name) {
    const std::string dir = RuncRoot() + "/" + name;
    struct stat st;
    if (::lstat(dir.c_str(), &st) != 0) {
      if (errno == ENOENT) return Status::Ok();
      return RetryError("runc state of " + name + ": " + dir + ": " + std::strerror(errno));
    }
    spdlog::warn("container {}: containerd left its runc state at {}; removing it", name, dir);
    // CRIU's root mount of a restore cut short: runc cannot remove the dir
    // while it is mounted.
    const std::string criu_root = dir + "/criu-root";
    if (::umount2(criu_root.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
      spdlog::warn("container {}: umount {}: {}", name, criu_root, std::strerror(errno));
    }
    // Kills what may still run of it, removes its cgroups and the dir.
    auto ran = commands.Run({cfg.runc_binary, "--root", RuncRoot(), "delete", "--force", name});
    if (::lstat(dir.c_str(), &st) == 0) {
      std::string why = ran.ok() ? ran->output : ran.status().ToString();
      while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
      if (why.size() > 400) why = why.substr(0, 400) + "...";
      return RetryError("runc state of " + name + " remains at " + dir + ": " + why);
    }
    return Status::Ok();
  }

  // Wrong-state check: the container must exist and have a task.
  StatusOr<ttypes::Process> RequireTask(const std::string& name) {
    auto task = GetTask(name);
    if (task.ok()) return task;
    if (task.status().code() != Code::kNotFound) return task.status();
    auto c = GetContainer(name);
    if (!c.ok()) return c.status();
    return ConflictError("container " + name + " has no task");
  }

  ContainerdConfig cfg;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<ctrs::Containers::Stub> containers;
  std::unique_ptr<content::Content::Stub> content_svc;
  std::unique_ptr<images::Images::Stub> images_svc;
  std::unique_ptr<leases::Leases::Stub> leases_svc;
  std::unique_ptr<snaps::Snapshots::Stub> snapshots;
  std::unique_ptr<tasks::Tasks::Stub> tasks_svc;
  std::unique_ptr<version::Version::Stub> version_svc;
  SystemCommandRunner commands;  // runc, for RemoveRuncLeftovers
};

ContainerdRuntime::ContainerdRuntime(ContainerdConfig config)
    : impl_(std::make_unique<Impl>(std::move(config))) {}
ContainerdRuntime::~ContainerdRuntime() = default;

const ContainerdConfig& ContainerdRuntime::config() const { return impl_->cfg; }

std::string ContainerdRuntime::NodeName() const { return impl_->cfg.node_name; }

Status ContainerdRuntime::Ping() {
  return Guard("ping", [&]() -> Status {
    google::protobuf::Empty req;
    version::VersionResponse resp;
    auto ctx = impl_->Ctx();
    return FromGrpc(impl_->version_svc->Version(ctx.get(), req, &resp), "containerd version");
  });
}

Status ContainerdRuntime::ImageExists(const std::string& image) {
  return Guard("image exists", [&]() -> Status {
    if (image.empty()) return InvalidError("image name is empty");
    images::GetImageRequest req;
    req.set_name(image);
    images::GetImageResponse resp;
    auto ctx = impl_->Ctx();
    return FromGrpc(impl_->images_svc->Get(ctx.get(), req, &resp), "image " + image);
  });
}

StatusOr<std::vector<std::string>> ContainerdRuntime::ListImages() {
  std::vector<std::string> names;
  Status s = Guard("list images", [&]() -> Status {
    images::ListImagesRequest req;
    images::ListImagesResponse resp;
    auto ctx = impl_->Ctx();
    KMX_RETURN_IF_ERROR(FromGrpc(impl_->images_svc->List(ctx.get(), req, &resp), "images"));
    for (const auto& image : resp.images()) names.push_back(image.name());
    return Status::Ok();
  });
  if (!s.ok()) return s;
  std::sort(names.begin(), names.end());
  return names;
}

Status ContainerdRuntime::CreateContainer(const ContainerSpec& spec) {
  return Guard("create container", [&]() -> Status {
    auto& im = *impl_;
    if (spec.name.empty()) return InvalidError("container name is empty");
    if (spec.image.empty()) return InvalidError("image is empty");
    if (!spec.log_path.empty() && spec.log_path.front() != '/')
      return InvalidError("log_path must be absolute: " + spec.log_path);
    {
      auto existing = im.GetContainer(spec.name);
      if (existing.ok()) return ConflictError("container " + spec.name + " already exists");
      if (existing.status().code() != Code::kNotFound) return existing.status();
    }
    KMX_ASSIGN_OR_RETURN(OciImageConfig image, im.ResolveImageConfig(spec.image));
    KMX_ASSIGN_OR_RETURN(std::string chain_id, ComputeChainId(image.diff_ids));

    OciSpecOptions opts;
    // The workload's own network namespace, made before the container (and
    // so before a restore into it); removed again unless the container is.
    struct NetworkGuard {
      WorkloadNetwork* network;
      const std::string& name;
      bool keep = false;
      ~NetworkGuard() {
        if (network != nullptr && !keep) (void)network->Teardown(name);
      }
    } network_guard{im.cfg.network, spec.name};
    if (im.cfg.network != nullptr) {
      KMX_ASSIGN_OR_RETURN(WorkloadNetworkInfo net, im.cfg.network->Setup(spec.name));
      opts.network_namespace_path = net.netns_path;
    }
    opts.cgroup_parent = im.cfg.cgroup_parent;
    opts.annotations[kAnnotationIncarnation] = NewIncarnation();
    opts.annotations[kLabelNode] = im.cfg.node_name;
    KMX_ASSIGN_OR_RETURN(json oci, BuildOciSpec(spec, image, opts));

    // Writable snapshot on top of the image's unpacked layers, created under a
    // lease (like containerd's client does) so GC cannot collect it before the
    // container record references it.
    KMX_ASSIGN_OR_RETURN(std::string lease, im.CreateLease());
    struct LeaseGuard {
      Impl* im;
      std::string id;
      ~LeaseGuard() { im->DeleteLease(id); }
    } lease_guard{&im, lease};
    {
      snaps::PrepareSnapshotRequest req;
      req.set_snapshotter(im.cfg.snapshotter);
      req.set_key(spec.name);
      req.set_parent(chain_id);
      snaps::PrepareSnapshotResponse resp;
      auto ctx = im.Ctx(im.cfg.rpc_timeout, lease);
      Status s = FromGrpc(im.snapshots->Prepare(ctx.get(), req, &resp),
                          "prepare snapshot " + spec.name + " on " + chain_id);
      if (s.code() == Code::kNotFound)
        return NotFoundError(s.message() + " (is image " + spec.image + " unpacked for " +
                             im.cfg.snapshotter + "?)");
      KMX_RETURN_IF_ERROR(s);
    }

    ctrs::CreateContainerRequest req;
    ctrs::Container* c = req.mutable_container();
    c->set_id(spec.name);
    c->set_image(spec.image);
    for (const auto& [k, v] : spec.labels) (*c->mutable_labels())[k] = v;
    (*c->mutable_labels())[kLabelNode] = im.cfg.node_name;
    if (!spec.log_path.empty()) (*c->mutable_labels())[kLabelLogPath] = spec.log_path;
    c->mutable_runtime()->set_name(im.cfg.runtime);
    Impl::PackAny(im.RuncOptions(), kRuncOptionsTypeUrl, c->mutable_runtime()->mutable_options());
    c->mutable_spec()->set_type_url(kSpecTypeUrl);
    c->mutable_spec()->set_value(oci.dump());
    c->set_snapshotter(im.cfg.snapshotter);
    c->set_snapshot_key(spec.name);
    ctrs::CreateContainerResponse resp;
    auto ctx = im.Ctx(im.cfg.rpc_timeout, lease);
    Status s =
        FromGrpc(im.containers->Create(ctx.get(), req, &resp), "create container " + spec.name);
    if (!s.ok()) {
      snaps::RemoveSnapshotRequest rreq;
      rreq.set_snapshotter(im.cfg.snapshotter);
      rreq.set_key(spec.name);
      google::protobuf::Empty e;
      auto rctx = im.Ctx();
      (void)im.snapshots->Remove(rctx.get(), rreq, &e);
      return s;
    }
    network_guard.keep = true;
    return Status::Ok();
  });
}

Status ContainerdRuntime::StartTask(const std::string& name) {
  return Guard("start task", [&]() -> Status {
    return impl_->CreateAndStartTask(name, impl_->RuncOptions(), impl_->cfg.rpc_timeout, "start");
  });
}

StatusOr<TaskInfo> ContainerdRuntime::Inspect(const std::string& name) {
  try {
    auto task = impl_->GetTask(name);
    if (!task.ok()) {
      if (task.status().code() != Code::kNotFound) return task.status();
      auto c = impl_->GetContainer(name);
      if (!c.ok()) return c.status();
      return TaskInfo{};
    }
    TaskInfo info;
    info.state = FromProtoStatus(task->status());
    info.pid = task->pid();
    info.exit_status = task->exit_status();
    return info;
  } catch (const std::exception& e) {
    return FailedError(std::string("inspect: unexpected exception: ") + e.what());
  }
}

StatusOr<std::vector<std::string>> ContainerdRuntime::ListContainers() {
  try {
    ctrs::ListContainersRequest req;
    ctrs::ListContainersResponse resp;
    auto ctx = impl_->Ctx();
    Status s = FromGrpc(impl_->containers->List(ctx.get(), req, &resp), "list containers");
    if (!s.ok()) return s;
    std::vector<std::string> out;
    for (const auto& c : resp.containers()) out.push_back(c.id());
    return out;
  } catch (const std::exception& e) {
    return FailedError(std::string("list containers: unexpected exception: ") + e.what());
  }
}

Status ContainerdRuntime::Pause(const std::string& name) {
  return Guard("pause", [&]() -> Status {
    // runc's cgroup v1 freezer gives up ("unable to freeze") when busy
    // processes keep the cgroup FREEZING on a loaded machine, thaws it and
    // leaves the task running; runc's maintainers leave the retry to the
    // caller (opencontainers/runc#4388). A few more tries, spaced out.
    Status s;
    for (int attempt = 1;; ++attempt) {
      KMX_ASSIGN_OR_RETURN(auto task, impl_->RequireTask(name));
      if (task.status() != ttypes::RUNNING)
        return ConflictError("pause " + name + ": task is not running");
      tasks::PauseTaskRequest req;
      req.set_container_id(name);
      google::protobuf::Empty e;
      auto ctx = impl_->Ctx();
      s = FromGrpc(impl_->tasks_svc->Pause(ctx.get(), req, &e), "pause task " + name);
      if (s.ok() || !IsTransientFreezeFailure(s) || attempt == kPauseAttempts) break;
      spdlog::warn("pause {}: {} (attempt {} of {}; trying again)", name, s.message(), attempt,
                   kPauseAttempts);
      std::this_thread::sleep_for(std::chrono::milliseconds(200 * attempt));
    }
    return s;
  });
}

bool IsTransientFreezeFailure(const Status& s) {
  return !s.ok() && s.message().find("unable to freeze") != std::string::npos;
}

Status ContainerdRuntime::Resume(const std::string& name) {
  return Guard("resume", [&]() -> Status {
    KMX_ASSIGN_OR_RETURN(auto task, impl_->RequireTask(name));
    if (task.status() != ttypes::PAUSED)
      return ConflictError("resume " + name + ": task is not paused");
    tasks::ResumeTaskRequest req;
    req.set_container_id(name);
    google::protobuf::Empty e;
    auto ctx = impl_->Ctx();
    return FromGrpc(impl_->tasks_svc->Resume(ctx.get(), req, &e), "resume task " + name);
  });
}

Status ContainerdRuntime::Delete(const std::string& name) {
  return Guard("delete", [&]() -> Status {
    auto& im = *impl_;
    if (name.empty()) return InvalidError("container name is empty");
    KMX_RETURN_IF_ERROR(im.KillAndWait(name));
    KMX_RETURN_IF_ERROR(im.DeleteTask(name));
    KMX_RETURN_IF_ERROR(im.RemoveRuncLeftovers(name));

    std::string snapshotter = im.cfg.snapshotter;
    std::string key = name;
    auto c = im.GetContainer(name);
    if (c.ok()) {
      if (!c->snapshotter().empty()) snapshotter = c->snapshotter();
      if (!c->snapshot_key().empty()) key = c->snapshot_key();
      ctrs::DeleteContainerRequest req;
      req.set_id(name);
      google::protobuf::Empty e;
      auto ctx = im.Ctx();
      Status s = FromGrpc(im.containers->Delete(ctx.get(), req, &e), "delete container " + name);
      if (!s.ok() && s.code() != Code::kNotFound) return s;
    } else if (c.status().code() != Code::kNotFound) {
      return c.status();
    }

    snaps::RemoveSnapshotRequest req;
    req.set_snapshotter(snapshotter);
    req.set_key(key);
    google::protobuf::Empty e;
    auto ctx = im.Ctx();
    Status s = FromGrpc(im.snapshots->Remove(ctx.get(), req, &e), "remove snapshot " + key);
    if (!s.ok() && s.code() != Code::kNotFound) return s;
    if (im.cfg.network != nullptr) KMX_RETURN_IF_ERROR(im.cfg.network->Teardown(name));
    return Status::Ok();
  });
}

StatusOr<std::string> ContainerdRuntime::WritableLayerDir(const std::string& name) {
  try {
    auto c = impl_->GetContainer(name);
    if (!c.ok()) return c.status();
    auto mounts = impl_->RootfsMounts(*c);
    if (!mounts.ok()) return mounts.status();
    for (const auto& m : *mounts) {
      if (m.type() == "overlay") {
        for (const auto& o : m.options()) {
          if (o.rfind("upperdir=", 0) == 0) return o.substr(9);
        }
      }
      if (m.type() == "bind" || m.type() == "rbind") return m.source();
    }
    return FailedError("writable layer of " + name + ": no overlay upperdir in snapshot mounts");
  } catch (const std::exception& e) {
    return FailedError(std::string("writable layer dir: unexpected exception: ") + e.what());
  }
}

Status ContainerdRuntime::CheckpointTask(const std::string& name, const CheckpointRequest& r) {
  return Guard("checkpoint", [&]() -> Status {
    auto& im = *impl_;
    if (r.image_dir.empty() || r.image_dir.front() != '/' || !IsDir(r.image_dir))
      return InvalidError("checkpoint image_dir must be an existing absolute directory: " +
                          r.image_dir);
    if (r.work_dir.empty() || r.work_dir.front() != '/' || !IsDir(r.work_dir))
      return InvalidError("checkpoint work_dir must be an existing absolute directory: " +
                          r.work_dir);
    KMX_ASSIGN_OR_RETURN(auto task, im.RequireTask(name));
    if (task.status() != ttypes::RUNNING && task.status() != ttypes::PAUSED)
      return ConflictError("checkpoint " + name + ": task is neither running nor paused");

    runcopts::CheckpointOptions opts;
    opts.set_exit(!r.leave_running);
    opts.set_image_path(r.image_dir);
    opts.set_work_path(r.work_dir);
    tasks::CheckpointTaskRequest req;
    req.set_container_id(name);
    Impl::PackAny(opts, kCheckpointOptionsTypeUrl, req.mutable_options());
    tasks::CheckpointTaskResponse resp;
    auto ctx = im.Ctx(im.cfg.criu_timeout);
    grpc::Status gs = im.tasks_svc->Checkpoint(ctx.get(), req, &resp);
    if (!gs.ok() && gs.error_code() == grpc::StatusCode::ALREADY_EXISTS &&
        FileExists(r.image_dir + "/inventory.img")) {
      // containerd failed on writing spec content AFTER the dump succeeded.
      return Status::Ok();
    }
    Status s = FromGrpc(gs, "checkpoint task " + name);
    if (!s.ok() && s.code() != Code::kRetry && s.code() != Code::kNotFound) {
      s = FailedError(s.message() + " (CRIU log: " + r.work_dir + "/dump.log)");
    }
    return s;
  });
}

Status ContainerdRuntime::Continue(const std::string& name) {
  return Guard("continue", [&]() -> Status {
    KMX_ASSIGN_OR_RETURN(auto task, impl_->RequireTask(name));
    if (task.status() != ttypes::RUNNING)
      return ConflictError("continue " + name + ": task is not running");
    tasks::KillRequest req;
    req.set_container_id(name);
    req.set_signal(SIGCONT);
    req.set_all(true);
    google::protobuf::Empty e;
    auto ctx = impl_->Ctx();
    return FromGrpc(impl_->tasks_svc->Kill(ctx.get(), req, &e), "continue task " + name);
  });
}

Status ContainerdRuntime::RestoreTask(const std::string& name, const RestoreRequest& r) {
  return Guard("restore", [&]() -> Status {
    auto& im = *impl_;
    if (r.image_dir.empty() || r.image_dir.front() != '/' ||
        !FileExists(r.image_dir + "/inventory.img"))
      return InvalidError("restore image_dir holds no CRIU images: " + r.image_dir);
    if (r.work_dir.empty() || r.work_dir.front() != '/' || !IsDir(r.work_dir))
      return InvalidError("restore work_dir must be an existing absolute directory: " + r.work_dir);
    {
      auto task = im.GetTask(name);
      if (task.ok()) return ConflictError("restore " + name + ": container already has a task");
      if (task.status().code() != Code::kNotFound) return task.status();
    }
    runcopts::Options opts = im.RuncOptions();
    opts.set_criu_image_path(r.image_dir);
    opts.set_criu_work_path(r.work_dir);
    // Restoring stopped: CRIU reads a configuration file named by the
    // spec's org.criu.config annotation (runc passes it in its RPC request)
    // whose "leave-stopped" overrides the RPC settings. The file lives only
    // for this restore: a later dump of the task (runc keeps the annotation)
    // finds no file, and CRIU then ignores it.
    std::string conf;
    if (r.leave_stopped || r.lazy_pages) {
      conf = r.work_dir + "/kmosix-restore.conf";
      std::string settings;
      if (r.leave_stopped) settings += "leave-stopped\n";
      if (r.lazy_pages) settings += "lazy-pages\n";  // never network-lock here: CRIU crashes
      KMX_RETURN_IF_ERROR(WriteFileAtomic(conf, settings).Annotate("restore"));
      if (Status s = im.SetCriuConfig(name, conf); !s.ok()) {
        ::unlink(conf.c_str());
        return s.Annotate("restore");
      }
    }
    Status s = im.CreateAndStartTask(name, opts, im.cfg.criu_timeout, "restore");
    if (!conf.empty()) ::unlink(conf.c_str());
    if (!s.ok() && s.code() != Code::kNotFound && s.code() != Code::kRetry)
      s = FailedError(s.message() + " (CRIU log: " + r.work_dir + "/restore.log)");
    return s;
  });
}

}  // namespace kmosix
