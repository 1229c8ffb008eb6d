"""The handlers of `shadow-edge run`, `inspect` and `demo` (imported lazily by shadow_edge.cli)."""
