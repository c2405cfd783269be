"""The daemon's side of the runners: which models are resident and when they load and
unload, the queue (scheduler.py), and the client that starts a runner process and speaks
the pipe's protocol to it (runner_client.py)."""
