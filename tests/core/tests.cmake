execd_test(validate_test SOURCES core/validate_test.cc LIBS core test_support)
execd_test(engine_test SOURCES core/engine_test.cc LIBS core test_support)
execd_test(event_loop_test SOURCES core/event_loop_test.cc LIBS core)
