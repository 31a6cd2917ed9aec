"""The pitfall modes: each swaps one protection for the naive strategy it replaces, chosen at the composition root (shared.service.runtime)."""
