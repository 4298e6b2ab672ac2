"""Routing: the engine (LinUCB over prompt features), its quality floor, warm start, embedders,
and the router task."""
