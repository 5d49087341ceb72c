"""The foundation every other folder may use: errors, whole-file writes, where the configs live, the config
schemas, checkpoint files. Imports nothing of cifake outside core/."""
