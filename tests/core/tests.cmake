execd_test(validate_test SOURCES core/validate_test.cc LIBS core test_support)
execd_test(engine_test SOURCES core/engine_test.cc LIBS core test_support)
execd_test(event_loop_test SOURCES core/event_loop_test.cc LIBS core)
execd_test(executor_test SOURCES core/executor_test.cc LIBS core)
execd_test(scheduler_test SOURCES core/scheduler_test.cc LIBS core)
execd_test(engine_failure_test SOURCES core/engine_failure_test.cc LIBS core test_support)

# The executor again under ThreadSanitizer (built with clang, outside the main build).
add_test(NAME executor_tsan
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/core/executor_tsan_test.sh
                 ${CMAKE_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR}/tsan)
set_tests_properties(executor_tsan PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
execd_test(compress_test SOURCES core/compress_test.cc LIBS core test_support)
execd_test(cache_test SOURCES core/cache_test.cc LIBS core)
execd_test(cache_key_test SOURCES core/cache_key_test.cc LIBS core)
execd_test(spawn_test SOURCES core/spawn_test.cc LIBS core test_support)
execd_test(stdio_plan_test SOURCES core/stdio_plan_test.cc LIBS core)
execd_test(worker_frame_test SOURCES core/worker_frame_test.cc LIBS core)
execd_test(dispatcher_test SOURCES core/dispatcher_test.cc LIBS core test_support)
execd_test(batch_core_test SOURCES core/batch_test.cc LIBS core test_support)

# The auto-tuner's test bed: the reference controllers, and a simulated service to compare
# controllers on.
add_library(tuner_testbed STATIC core/tuner_reference.cc core/tuner_scenarios.cc
  core/tuner_sim.cc)
target_include_directories(tuner_testbed PUBLIC ${CMAKE_SOURCE_DIR})
target_compile_options(tuner_testbed PRIVATE ${EXECD_WARNINGS})
target_link_libraries(tuner_testbed PUBLIC core)
execd_test(tuner_reference_test SOURCES core/tuner_reference_test.cc LIBS tuner_testbed)
execd_test(tuner_sim_test SOURCES core/tuner_sim_test.cc LIBS tuner_testbed)
execd_test(tuner_test SOURCES core/tuner_test.cc LIBS tuner_testbed)
execd_test(auto_tuner_test SOURCES core/auto_tuner_test.cc LIBS core)
execd_test(authz_test SOURCES core/authz_test.cc LIBS core test_support)
target_compile_definitions(authz_test PRIVATE SOURCE_DIR="${CMAKE_SOURCE_DIR}")
execd_test(dispatcher_authz_test SOURCES core/dispatcher_authz_test.cc LIBS core test_support)
