"""The service's benchmark: `make bench` (or `python -m bench --help`). Not part of the tests."""
