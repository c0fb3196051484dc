"""The dashboard's static files (static/): plain HTML, CSS and JS, served at /ui.

Nothing here runs on the server; service/api/routes/ui.py serves these files as they are.
"""
