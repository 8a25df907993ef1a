"""The machine a run computes on: device choice, CPU set-up, what it was, and how fast."""
