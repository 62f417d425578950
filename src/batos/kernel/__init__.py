"""The kernel: UVM lifecycle, the Synaptic Bridge, workers and dispatch. Knows nothing of prompts."""
