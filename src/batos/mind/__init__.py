"""The mind: the cognitive cycle, synthesis, the Guardian, the sandbox. Knows nothing of sockets."""
