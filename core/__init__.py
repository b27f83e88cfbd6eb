"""Ground floor: user-facing errors, the strict config reader, hashing and paths. Imports nothing of the project."""
