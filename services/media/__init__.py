"""Media: what an upload is (content.py), how it is accepted (store.py) and where its bytes are kept:
MongoDB's GridFS (blobs.py; migrate.py copies in files kept on disk by older versions)."""
