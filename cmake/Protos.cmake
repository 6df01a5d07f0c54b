# Generates C++ protobuf/gRPC stubs from the proto files Debian ships
# (extracted by scripts/setup into third_party/protos/raw).
#
# Files are staged under their import paths, with protoc 3.21's
# unsupported `import weak` rewritten to a plain import.

set(KMX_PROTO_RAW "${CMAKE_SOURCE_DIR}/third_party/protos/raw/usr/share/gocode/src"
    CACHE PATH "Root of the proto files extracted from Debian's -dev packages")
if(NOT EXISTS "${KMX_PROTO_RAW}/github.com/containerd/containerd/api")
  message(FATAL_ERROR "proto files not found under ${KMX_PROTO_RAW}: run scripts/setup first")
endif()

find_program(KMX_PROTOC protoc REQUIRED)
find_program(KMX_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

set(KMX_PROTO_STAGE "${CMAKE_BINARY_DIR}/protos/staged")
set(KMX_PROTO_OUT "${CMAKE_BINARY_DIR}/protos/gen")
file(MAKE_DIRECTORY "${KMX_PROTO_OUT}")

# kmx_stage_proto(<import path> <file on disk>)
function(kmx_stage_proto import_path src)
  file(READ "${src}" content)
  string(REPLACE "import weak " "import " content "${content}")
  set(dst "${KMX_PROTO_STAGE}/${import_path}")
  if(EXISTS "${dst}")
    file(READ "${dst}" old)
    if(old STREQUAL content)
      return()
    endif()
  endif()
  file(WRITE "${dst}" "${content}")
endfunction()

# kmx_proto_library(<target> GRPC <import paths with services> MESSAGES <import paths>)
function(kmx_proto_library target)
  cmake_parse_arguments(ARG "" "" "GRPC;MESSAGES" ${ARGN})
  set(srcs)
  foreach(p IN LISTS ARG_GRPC ARG_MESSAGES)
    string(REGEX REPLACE "\\.proto$" "" base "${p}")
    set(outs "${KMX_PROTO_OUT}/${base}.pb.cc" "${KMX_PROTO_OUT}/${base}.pb.h")
    set(flags "--cpp_out=${KMX_PROTO_OUT}")
    if(p IN_LIST ARG_GRPC)
      list(APPEND outs "${KMX_PROTO_OUT}/${base}.grpc.pb.cc" "${KMX_PROTO_OUT}/${base}.grpc.pb.h")
      list(APPEND flags "--grpc_out=${KMX_PROTO_OUT}" "--plugin=protoc-gen-grpc=${KMX_GRPC_CPP_PLUGIN}")
    endif()
    add_custom_command(
      OUTPUT ${outs}
      COMMAND ${KMX_PROTOC} -I "${KMX_PROTO_STAGE}" -I /usr/include ${flags} "${p}"
      DEPENDS "${KMX_PROTO_STAGE}/${p}"
      COMMENT "protoc ${p}"
      VERBATIM)
    list(APPEND srcs ${outs})
  endforeach()
  add_library(${target} STATIC ${srcs})
  target_include_directories(${target} SYSTEM PUBLIC "${KMX_PROTO_OUT}")
  target_link_libraries(${target} PUBLIC gRPC::grpc++ protobuf::libprotobuf)
  # Generated code is not ours to warn about.
  target_compile_options(${target} PRIVATE -w)
endfunction()

set(_ctd "github.com/containerd/containerd")
set(KMX_CONTAINERD_GRPC
  ${_ctd}/api/services/containers/v1/containers.proto
  ${_ctd}/api/services/content/v1/content.proto
  ${_ctd}/api/services/images/v1/images.proto
  ${_ctd}/api/services/leases/v1/leases.proto
  ${_ctd}/api/services/namespaces/v1/namespace.proto
  ${_ctd}/api/services/snapshots/v1/snapshots.proto
  ${_ctd}/api/services/tasks/v1/tasks.proto
  ${_ctd}/api/services/version/v1/version.proto)
set(KMX_CONTAINERD_MESSAGES
  ${_ctd}/api/types/descriptor.proto
  ${_ctd}/api/types/metrics.proto
  ${_ctd}/api/types/mount.proto
  ${_ctd}/api/types/platform.proto
  ${_ctd}/api/types/task/task.proto
  ${_ctd}/runtime/v2/runc/options/oci.proto
  github.com/gogo/protobuf/gogoproto/gogo.proto)
foreach(p IN LISTS KMX_CONTAINERD_GRPC KMX_CONTAINERD_MESSAGES)
  kmx_stage_proto("${p}" "${KMX_PROTO_RAW}/${p}")
endforeach()
# containerd imports gogo as "gogoproto/gogo.proto".
kmx_stage_proto(gogoproto/gogo.proto "${KMX_PROTO_RAW}/github.com/gogo/protobuf/gogoproto/gogo.proto")
list(REMOVE_ITEM KMX_CONTAINERD_MESSAGES github.com/gogo/protobuf/gogoproto/gogo.proto)
list(APPEND KMX_CONTAINERD_MESSAGES gogoproto/gogo.proto)
kmx_proto_library(kmosix_containerd_proto
  GRPC ${KMX_CONTAINERD_GRPC}
  MESSAGES ${KMX_CONTAINERD_MESSAGES})

# etcd v3 (KV, Watch, Lease services) from golang-etcd-server-dev. etcd's files
# import each other as "etcd/...", gogo as "gogoproto/gogo.proto" and
# google/api/annotations.proto (golang-github-gogo-googleapis-dev). The stubs
# go to their own output folder: gogo.proto is compiled into both this library
# and kmosix_containerd_proto (identical objects; with static libraries the
# linker takes one), so neither library depends on the other.
function(kmx_etcd_protos)
  set(etcd_src "${KMX_PROTO_RAW}/go.etcd.io/etcd")
  set(gapi_src "${KMX_PROTO_RAW}/github.com/gogo/googleapis")
  if(NOT EXISTS "${etcd_src}/etcdserver/etcdserverpb/rpc.proto")
    message(FATAL_ERROR "etcd proto files not found under ${etcd_src}: run scripts/setup first")
  endif()
  kmx_stage_proto(etcd/etcdserver/etcdserverpb/rpc.proto "${etcd_src}/etcdserver/etcdserverpb/rpc.proto")
  kmx_stage_proto(etcd/mvcc/mvccpb/kv.proto "${etcd_src}/mvcc/mvccpb/kv.proto")
  kmx_stage_proto(etcd/auth/authpb/auth.proto "${etcd_src}/auth/authpb/auth.proto")
  kmx_stage_proto(google/api/annotations.proto "${gapi_src}/google/api/annotations.proto")
  kmx_stage_proto(google/api/http.proto "${gapi_src}/google/api/http.proto")
  kmx_stage_proto(gogoproto/gogo.proto "${KMX_PROTO_RAW}/github.com/gogo/protobuf/gogoproto/gogo.proto")
  # kmx_proto_library reads KMX_PROTO_OUT from this (function) scope.
  set(KMX_PROTO_OUT "${CMAKE_BINARY_DIR}/protos/gen-etcd")
  file(MAKE_DIRECTORY "${KMX_PROTO_OUT}")
  kmx_proto_library(kmosix_etcd_proto
    GRPC etcd/etcdserver/etcdserverpb/rpc.proto
    MESSAGES etcd/mvcc/mvccpb/kv.proto etcd/auth/authpb/auth.proto
      google/api/annotations.proto google/api/http.proto gogoproto/gogo.proto)
endfunction()
kmx_etcd_protos()
