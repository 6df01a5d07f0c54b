// The ContainerRuntime conformance suite against the fake used by the unit
// tests: the fake must keep the contract the real adapter keeps.
#include <memory>

#include "fakes/fake_runtime.h"
#include "lib/containerd/runtime_conformance.h"

namespace {

std::unique_ptr<kmosix::ContainerRuntime> MakeFake() {
  auto rt = std::make_unique<kmosix::testing::FakeRuntime>(
      "fake-node", "/tmp/kmx-conformance-" + std::to_string(::getpid()));
  rt->AddImage("kmosix.local/demo:latest");
  return rt;
}

}  // namespace

KMX_INSTANTIATE_RUNTIME_CONFORMANCE(Fake, kmosix::testing::RuntimeConformanceParam{
                                              "fake", MakeFake, "kmosix.local/demo:latest"});
