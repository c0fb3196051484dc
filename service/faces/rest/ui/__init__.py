"""The dashboard's static files (static/): plain HTML, CSS and JS, served at /ui.

Nothing here runs on the server; service/faces/rest/routes/ui.py serves these files as they are.
"""
