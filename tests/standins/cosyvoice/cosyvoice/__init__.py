"""Stand-in for the upstream `cosyvoice` package (see README.md beside this folder)."""
