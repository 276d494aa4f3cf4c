"""pcv.bench: latency/throughput of pcv against its baselines."""
