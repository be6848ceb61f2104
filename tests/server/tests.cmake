add_library(test_support STATIC ${CMAKE_CURRENT_SOURCE_DIR}/support/subprocess.cc)
target_include_directories(test_support PUBLIC ${CMAKE_SOURCE_DIR})
target_compile_options(test_support PRIVATE ${EXECD_WARNINGS})
target_link_libraries(test_support PUBLIC absl::synchronization absl::strings absl::time)

execd_test(executor_service_test
  SOURCES server/executor_service_test.cc
  LIBS server test_support)

# Tests of the shipped binaries, as a user runs them.
execd_proto_library(reflection_client_proto ${CMAKE_CURRENT_SOURCE_DIR}/protos
  reflection_client.proto)

execd_test(binaries_test
  SOURCES server/binaries_test.cc
  LIBS test_support execd_proto reflection_client_proto gRPC::grpc++)
target_compile_definitions(binaries_test PRIVATE
  EXECD_BIN="$<TARGET_FILE:execd>"
  EXECCTL_BIN="$<TARGET_FILE:execctl>"
  LOADTEST_BIN="$<TARGET_FILE:execd-loadtest>")
add_dependencies(binaries_test execd execctl execd-loadtest)
