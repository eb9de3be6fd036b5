"""Internal modules: not a public API."""
