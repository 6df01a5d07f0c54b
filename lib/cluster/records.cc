#include "cluster/records.h"
