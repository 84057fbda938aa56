"""Offline data: the table schema every loader produces, relevance metrics, and the files
one stage writes for the next (artifacts). torch-free.
"""
