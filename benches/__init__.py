"""segmint benchmarks: the standard workload (DESIGN §7) and its peers."""
