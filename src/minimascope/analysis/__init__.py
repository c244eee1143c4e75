"""Analyses that describe a minimum: weight statistics, shared mistakes, statistics over seeds,
and comparisons of networks. One module per analysis family; each holds pure functions on
tensors or arrays, a result type with ``to_dict``, a writer of versioned files and their reader."""
