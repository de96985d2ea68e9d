"""Metric sources: one module per source behind `MetricSource`."""
