add_library(test_server STATIC ${CMAKE_CURRENT_SOURCE_DIR}/support/test_server.cc)
target_include_directories(test_server PUBLIC ${CMAKE_SOURCE_DIR})
target_compile_options(test_server PRIVATE ${EXECD_WARNINGS})
target_link_libraries(test_server PUBLIC server GTest::gtest)

# A program that misbehaves on request (allocates, forks, spins, ignores SIGTERM...).
add_executable(execd-test-child ${CMAKE_CURRENT_SOURCE_DIR}/support/test_child.cc)
target_compile_options(execd-test-child PRIVATE ${EXECD_WARNINGS})

execd_test(convert_test
  SOURCES server/convert_test.cc
  LIBS server)
execd_test(arena_allocator_test
  SOURCES server/arena_allocator_test.cc
  LIBS server)

execd_test(auth_test
  SOURCES server/auth_test.cc
  LIBS server test_support)

execd_test(executor_service_test
  SOURCES server/executor_service_test.cc
  LIBS test_server test_support)

execd_test(scheduling_test
  SOURCES server/scheduling_test.cc
  LIBS test_server test_support)

execd_test(containment_test
  SOURCES server/containment_test.cc
  LIBS test_server test_support)
target_compile_definitions(containment_test PRIVATE
  TEST_CHILD_BIN="$<TARGET_FILE:execd-test-child>")
add_dependencies(containment_test execd-test-child)

# Tests of the shipped binaries, as a user runs them.
execd_proto_library(reflection_client_proto ${CMAKE_CURRENT_SOURCE_DIR}/protos
  reflection_client.proto)

execd_test(binaries_test
  SOURCES server/binaries_test.cc
  LIBS test_support execd_proto reflection_client_proto gRPC::grpc++)
target_compile_definitions(binaries_test PRIVATE
  EXECD_BIN="$<TARGET_FILE:execd>"
  EXECCTL_BIN="$<TARGET_FILE:execctl>"
  LOADTEST_BIN="$<TARGET_FILE:execd-loadtest>"
  TEST_WORKER_BIN="$<TARGET_FILE:execd-test-worker>")
add_dependencies(binaries_test execd execctl execd-loadtest execd-test-worker)

# Authentication end to end: TLS, mutual TLS, tokens, the health port, metrics' basic auth,
# over certificates the test makes with openssl.
execd_test(authentication_test
  SOURCES server/authentication_test.cc
  LIBS test_support execd_proto reflection_client_proto gRPC::grpc++)
target_compile_definitions(authentication_test PRIVATE
  EXECD_BIN="$<TARGET_FILE:execd>"
  EXECCTL_BIN="$<TARGET_FILE:execctl>"
  LOADTEST_BIN="$<TARGET_FILE:execd-loadtest>")
add_dependencies(authentication_test execd execctl execd-loadtest)

# execctl top on a terminal, piped, interrupted and losing its server.
execd_test(top_test
  SOURCES server/top_test.cc
  LIBS test_support execd_proto gRPC::grpc++)
target_compile_definitions(top_test PRIVATE
  EXECD_BIN="$<TARGET_FILE:execd>"
  EXECCTL_BIN="$<TARGET_FILE:execctl>")
add_dependencies(top_test execd execctl)

execd_test(drain_test
  SOURCES server/drain_test.cc
  LIBS test_server test_support)

execd_test(scale_test
  SOURCES server/scale_test.cc
  LIBS test_support execd_proto gRPC::grpc++)
target_compile_definitions(scale_test PRIVATE EXECD_BIN="$<TARGET_FILE:execd>")
add_dependencies(scale_test execd)

execd_test(pools_test
  SOURCES server/pools_test.cc
  LIBS test_server test_support)
target_compile_definitions(pools_test PRIVATE
  TEST_WORKER_BIN="$<TARGET_FILE:execd-test-worker>"
  SOURCE_DIR="${CMAKE_SOURCE_DIR}")
add_dependencies(pools_test execd-test-worker)

execd_test(streaming_test
  SOURCES server/streaming_test.cc
  LIBS test_server test_support)

execd_test(batch_test
  SOURCES server/batch_test.cc
  LIBS test_server test_support)

execd_test(result_cache_test
  SOURCES server/result_cache_test.cc
  LIBS test_server test_support)

execd_test(pipeline_test
  SOURCES server/pipeline_test.cc
  LIBS test_server test_support)

execd_test(attach_test
  SOURCES server/attach_test.cc
  LIBS test_server test_support)

execd_test(leak_test
  SOURCES server/leak_test.cc
  LIBS test_support execd_proto gRPC::grpc++)
target_compile_definitions(leak_test PRIVATE
  EXECD_BIN="$<TARGET_FILE:execd>"
  TEST_WORKER_BIN="$<TARGET_FILE:execd-test-worker>")
add_dependencies(leak_test execd execd-test-worker)

execd_test(memory_test
  SOURCES server/memory_test.cc
  LIBS test_support execd_proto gRPC::grpc++)
target_compile_definitions(memory_test PRIVATE EXECD_BIN="$<TARGET_FILE:execd>")
add_dependencies(memory_test execd)

execd_test(authz_config_test
  SOURCES server/authz_config_test.cc
  LIBS server test_support)
target_compile_definitions(authz_config_test PRIVATE SOURCE_DIR="${CMAKE_SOURCE_DIR}")

execd_test(authz_server_test
  SOURCES server/authz_test.cc
  LIBS test_server test_support)

# The shipped binary under --authz_policy: start-up, SIGHUP, reflection.
execd_test(authz_binary_test
  SOURCES server/authz_binary_test.cc
  LIBS test_support execd_proto reflection_client_proto gRPC::grpc++)
target_compile_definitions(authz_binary_test PRIVATE EXECD_BIN="$<TARGET_FILE:execd>")
add_dependencies(authz_binary_test execd)
