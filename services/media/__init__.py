"""Media: what an upload is (content.py) and where it is kept (store.py)."""
