"""The watchdog: spawns, watches, kills and respawns worker processes. Knows nothing of Phoenix."""
