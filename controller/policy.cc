#include "controller/policy.h"
