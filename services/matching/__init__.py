"""Discovery, likes, passes, matches, unmatch and blocks."""
