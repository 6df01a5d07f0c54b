#include "cluster/work_queue.h"
