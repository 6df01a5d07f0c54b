#include "controller/auth.h"
