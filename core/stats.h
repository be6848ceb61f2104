// Each family of stats is declared once, as a list of X(type, name, what) lines
// (EXECD_CACHE_STATS in cache.h, EXECD_POOL_STATS in pool.h). Its struct is derived from the
// list with EXECD_STAT_FIELD, and the server copies each field to the API field of the same
// name from it, so adding a stat is one line in its list and its field in execd.proto.
#pragma once

#include <cstdint>

#define EXECD_STAT_FIELD(type, name, what) type name = 0;
