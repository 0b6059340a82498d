"""Storage: the MongoDB client and collections, stored-document factories, the embedded server."""
