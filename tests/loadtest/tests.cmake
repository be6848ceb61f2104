# execd-loadtest's open loop against an in-process server, and the binary's flags for it.
execd_test(open_loop_test
  SOURCES loadtest/open_loop_test.cc
  LIBS execd_loadtest_lib test_server test_support)
target_compile_definitions(open_loop_test PRIVATE LOADTEST_BIN="$<TARGET_FILE:execd-loadtest>")
add_dependencies(open_loop_test execd-loadtest)
