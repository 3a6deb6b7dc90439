"""`yelp-lora bench`: throughput of our paths against the usual way (run), by the FLOP model (flops),
against the machine's matmul peak (peaks), each path in its own process taking turns (harness)."""
