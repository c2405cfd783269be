"""Which models are resident and when they load and unload (scheduler.py)."""
