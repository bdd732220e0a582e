"""Settings, the embedded subject (model + SAEs), data and run configs."""
