"""Pure placement decisions: pools (priorities, restrictions, scale-in order)."""
