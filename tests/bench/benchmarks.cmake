# Benchmarks are built with the tests but not run by ctest: figures are measured on
# purpose, in one run, and written to BENCHMARKS.md.
function(execd_benchmark name)
  add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/bench/${name}.cc)
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR})
  target_compile_options(${name} PRIVATE ${EXECD_WARNINGS})
  target_link_libraries(${name} PRIVATE core benchmark::benchmark_main)
endfunction()

execd_benchmark(spawn_bench)
execd_benchmark(executor_bench)
execd_benchmark(lz4_bench)
execd_benchmark(cache_bench)
execd_benchmark(metrics_bench)
target_link_libraries(metrics_bench PRIVATE metrics)
