"""The real-time machinery: the bus between nodes, this node's sockets, presence, typing."""
