"""Where instance processes run: local processes by default (a Ray backend comes later)."""
