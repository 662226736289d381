"""What every other part of brainfl stands on: the user-error type, atomic file writes, logging, phase timers.

Nothing here imports another brainfl module.
"""
