// The container runtime's default seccomp profile, as an OCI
// "linux.seccomp" object: a C++ copy of containerd 1.6's
// contrib/seccomp/seccomp_default.go (itself moby's default profile) for
// x86_64, because kmosix builds the OCI spec itself and containerd applies
// no profile to containers created through its gRPC API.
//
// Default action SCMP_ACT_ERRNO (EPERM); an allow-list of ~350 syscalls;
// personality() only with the values moby allows; clone() without namespace
// flags and clone3() -> ENOSYS unless CAP_SYS_ADMIN is in the bounding set;
// the capability-gated groups (chroot with CAP_SYS_CHROOT, ptrace family with
// CAP_SYS_PTRACE, ...) follow the bounding set given.
//
// Pure function, no shared state, safe from any thread; never fails.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kmosix {

// The profile for a container whose bounding capability set is `bounding`
// (names like "CAP_SYS_CHROOT").
nlohmann::json DefaultSeccompProfile(const std::vector<std::string>& bounding);

}  // namespace kmosix
