"""Talking to models: the terminal chat (`terminal`), and an OpenAI-compatible server (`api`) over a continuous
batcher (`batcher`); `prompts` says how a checkpoint is asked, for both."""
