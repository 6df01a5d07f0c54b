// Cluster events for GET /v1/events (being written).
#pragma once
