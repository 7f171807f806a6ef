"""Exports: recurlm checkpoints in other tools' formats (`recurlm export ...`)."""
