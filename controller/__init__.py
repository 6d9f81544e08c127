"""Central controller: registry, control loops, agent stream and admin API."""
