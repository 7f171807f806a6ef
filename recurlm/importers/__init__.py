"""Other projects' checkpoints as recurlm checkpoints (`recurlm import SOURCE`)."""
