"""Small command-line stages that are not part of a larger subsystem (e.g. `info`)."""
