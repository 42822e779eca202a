"""Performance model: predicts layer and whole-network latency from the profile."""
