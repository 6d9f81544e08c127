"""Package data of the policies: the known networks' latency matrix (mt_latency_ms.csv)."""
