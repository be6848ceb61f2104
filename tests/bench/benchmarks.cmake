# Benchmarks are built with the tests but not run by ctest: figures are measured on
# purpose, in one run, and written to BENCHMARKS.md.
add_executable(spawn_bench ${CMAKE_CURRENT_SOURCE_DIR}/bench/spawn_bench.cc)
target_include_directories(spawn_bench PRIVATE ${CMAKE_SOURCE_DIR})
target_compile_options(spawn_bench PRIVATE ${EXECD_WARNINGS})
target_link_libraries(spawn_bench PRIVATE core benchmark::benchmark_main)
