# libFuzzer targets for what execd reads from outside (built with clang, outside the main
# build): a worker's response stream, requests, the pools file, the authorization policy,
# lz4 frames. fuzz_build builds them all; each fuzz_<target> then fuzzes for 20 s from
# tests/fuzz/corpus/<target>.
set(EXECD_FUZZ_SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_test.sh)
set(EXECD_FUZZ_DIR ${CMAKE_CURRENT_BINARY_DIR}/fuzz)
add_test(NAME fuzz_build COMMAND ${EXECD_FUZZ_SCRIPT} build ${CMAKE_SOURCE_DIR} ${EXECD_FUZZ_DIR})
set_tests_properties(fuzz_build PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300 FIXTURES_SETUP fuzz)
foreach(target worker_frames execute_request pools_config authz_policy lz4)
  add_test(NAME fuzz_${target}
           COMMAND ${EXECD_FUZZ_SCRIPT} run ${CMAKE_SOURCE_DIR} ${EXECD_FUZZ_DIR} ${target} 20)
  set_tests_properties(fuzz_${target} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                       FIXTURES_REQUIRED fuzz)
endforeach()
