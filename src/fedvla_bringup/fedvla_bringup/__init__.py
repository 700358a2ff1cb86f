"""Launch files, parameters and the `fedvla` command line that starts the stack."""
