"""Fast tests: nothing here starts a Flower process or a simulation (tests/conftest.py fails a test
that does). `pytest tests/unit` is the development loop."""
