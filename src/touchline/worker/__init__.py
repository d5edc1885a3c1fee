"""Workers: loops that claim due work and run the engine."""
