"""The query half: vectors in, ranked catalog rows out."""
