"""Analyses that read trained networks and write result files: comparisons, weights, mistakes, seeds."""
