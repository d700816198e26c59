"""The walkthrough: `python -m unittest -v` lists the tests in the order of the specs."""
