#include "cluster/leader_election.h"
