#include "cluster/prefix_cache.h"
