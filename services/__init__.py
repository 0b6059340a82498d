"""The domain: plain async Python, no Tornado, no HTTP."""
