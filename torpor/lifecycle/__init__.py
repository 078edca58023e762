"""Instance lifecycle: facts recorded by the reconciler, state derived from them by one pure function."""
