"""Evaluations of trained models (``vidhash eval ...``): ``world`` — memory of a world model on
held-out worlds (leave a place, wander for a horizon, come back)."""
