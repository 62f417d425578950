"""Language model backends (embedded and OpenAI-compatible HTTP), the default model, and the
expert memory tiers. Knows nothing of sockets; keeps no state in the image."""
