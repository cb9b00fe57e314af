"""Progressive delivery: rollout state kept in the registry, its analysis, and the controller that drives it."""
