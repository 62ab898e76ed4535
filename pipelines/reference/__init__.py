"""The reference night: its generator, ground truth, producer and test data."""
