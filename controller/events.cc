#include "controller/events.h"
