"""Fractal Memory: documents chunked into the image, lexical and vector indexes, hybrid search.
Knows nothing of sockets or prompts."""
