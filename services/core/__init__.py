"""The app's wiring: settings, the container that builds a node's services, domain errors, logs, metrics."""
