"""Launchers start, signal and observe trainer processes; the core never knows which."""
