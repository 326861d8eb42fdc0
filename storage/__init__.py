"""The queue, its database models and migrations, the media store and the admin CLI.

Imports neither `bot` nor `engine`: the job contract lives here because it is the one thing both share.
"""
