"""The `emolightning` command. Importing this package imports no lightning: `launch` answers `--version` at once."""
