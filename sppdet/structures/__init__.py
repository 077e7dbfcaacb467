"""Plain data and the conventions every layer shares: boxes, training windows."""
