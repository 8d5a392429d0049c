"""Model bundles shipped with scdr, one folder per drug (format in README.md)."""
