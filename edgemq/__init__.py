"""The thin composition root for the ``edgemq`` command (cluster up/down/status, and each component)."""
