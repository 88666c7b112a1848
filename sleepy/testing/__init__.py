"""Test doubles that are real servers: the scripted chat server (a model that answers from a script)."""
