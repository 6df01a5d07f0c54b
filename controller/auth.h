// Bearer-token authentication and roles for the controller API (being written).
#pragma once
