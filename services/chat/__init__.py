"""Conversations and messages: sending, history, read pointers, conversation metadata."""
