"""Talking to models: the terminal chat (an OpenAI-compatible server and web chat are to follow)."""
