"""Benchmarks: the bot measured against its floor on this machine, in one run (`python -m bench`)."""
