"""Autoscaling: what the gateway measures and the pure decisions made from it (Knative's KPA)."""
