"""Accounts: passwords, tokens, profiles, sign-in throttling."""
