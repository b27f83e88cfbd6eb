"""The `moai` command line: the top floor. Parses arguments, calls into the packages, prints."""
