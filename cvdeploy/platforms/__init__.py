"""Platforms that run endpoints: replicas, a gateway, an autoscaler and a control plane."""
